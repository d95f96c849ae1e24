"""Read and write Flax's legacy msgpack checkpoints with msgpack and numpy only (no JAX, no Flax).

Wire format (learned from google/flax `flax/serialization.py` and `flax/training/checkpoints.py`):
* the file is one msgpack map: the state dict of the train state; lists and tuples were turned into
  maps with keys '0', '1', ... before packing;
* ext type 1: an ndarray, payload = msgpack array [shape, dtype name, raw C-order bytes];
  ext type 2: a Python complex, payload = msgpack array [real, imag];
  ext type 3: a numpy scalar, payload as for ext 1 with shape [];
* an array over MAX_CHUNK_SIZE bytes is replaced by a map {'__msgpack_chunked_array__': True,
  'shape': {'0': d0, ...}, 'chunks': {'0': flat array, ...}};
* `save_checkpoint(dir, state, step)` names the file `checkpoint_<step>` and restore picks the
  numerically largest step; `checkpoint_tmp` (an unfinished write) is ignored.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from mtv.errors import CheckpointError
from mtv.utils.fileio import atomic_path

EXT_NDARRAY = 1
EXT_NATIVE_COMPLEX = 2
EXT_NPSCALAR = 3
_EXT_NAMES = {EXT_NDARRAY: "ndarray", EXT_NATIVE_COMPLEX: "native complex", EXT_NPSCALAR: "numpy scalar"}

# Flax's limit (msgpack objects are capped at 2**31 - 1 bytes; Flax leaves a margin). Tests patch it.
MAX_CHUNK_SIZE = 2**30
CHUNKED_KEY = "__msgpack_chunked_array__"

# `checkpoint_<number>` as flax's natural sort reads it; this excludes checkpoint_tmp, *_gda and
# Orbax's *.orbax-checkpoint-tmp-* directories.
_CHECKPOINT_RE = re.compile(r"^checkpoint_([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)$")

_TRAIN_STATE_KEYS = ("global_step", "optimizer", "opt_state", "model_state", "rng", "metadata",
                     "accum_train_time")


# ----------------------------------------------------------------------------------------------
# Reading


class _BadLeaf:
    """Stands in for an ext record that could not be decoded; reported with its tree path later."""

    def __init__(self, message: str):
        self.message = message


def _dtype_from_name(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        pass
    # bfloat16 / float8 arrays from JAX: numpy lacks them, ml_dtypes (shipped with TF) has them.
    try:
        import ml_dtypes
    except ImportError as err:
        raise ValueError(
            f"dtype '{name}' needs the ml_dtypes package (pip install ml_dtypes; it comes with tensorflow)"
        ) from err
    if not hasattr(ml_dtypes, name):
        raise ValueError(f"unknown dtype name '{name}'")
    return np.dtype(getattr(ml_dtypes, name))


def _decode_array(data: bytes) -> np.ndarray:
    """Decodes an ext 1/3 payload; raises ValueError with what is wrong."""
    try:
        record = msgpack.unpackb(data, raw=True)
    except Exception as err:  # any msgpack failure means a corrupt record
        raise ValueError(f"array record is not valid msgpack ({err})") from err
    if not isinstance(record, (list, tuple)) or len(record) != 3:
        raise ValueError("array record is not a [shape, dtype name, bytes] triple")
    shape, dtype_name, buffer = record
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"array shape {shape!r} is not a list of non-negative integers")
    if not isinstance(dtype_name, bytes) or not isinstance(buffer, bytes):
        raise ValueError("array dtype name or data has the wrong msgpack type")
    dtype = _dtype_from_name(dtype_name.decode("ascii", errors="replace"))
    expected = math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise ValueError(
            f"array of shape {tuple(shape)} and dtype {dtype.name} needs {expected} bytes, "
            f"the record holds {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    try:
        if code == EXT_NDARRAY:
            return _decode_array(data)
        if code == EXT_NPSCALAR:
            return _decode_array(data)[()]
        if code == EXT_NATIVE_COMPLEX:
            real, imag = msgpack.unpackb(data)
            return complex(real, imag)
    except Exception as err:  # reported with the leaf's path by _finish
        return _BadLeaf(f"bad {_EXT_NAMES[code]} record: {err}")
    known = ", ".join(f"{c} ({n})" for c, n in _EXT_NAMES.items())
    return _BadLeaf(f"unknown msgpack ext type {code}; Flax uses {known}")


def _index_map(node: Any, what: str, where: str) -> list:
    """Values of a {'0': .., '1': ..} map in index order."""
    if not isinstance(node, dict) or sorted(node) != sorted(str(i) for i in range(len(node))):
        raise ValueError(f"{what} of chunked array at {where} is not a map with keys '0', '1', ...")
    return [node[str(i)] for i in range(len(node))]


def _unchunk(node: dict, where: str) -> np.ndarray:
    shape = _index_map(node.get("shape"), "'shape'", where)
    chunks = _index_map(node.get("chunks"), "'chunks'", where)
    if not all(isinstance(d, (int, np.integer)) for d in shape):
        raise ValueError(f"'shape' of chunked array at {where} is not all integers: {shape}")
    if not chunks or not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in chunks):
        raise ValueError(f"'chunks' of chunked array at {where} are not 1-D arrays")
    flat = np.concatenate(chunks)
    if flat.size != math.prod(shape):
        raise ValueError(f"chunked array at {where} holds {flat.size} values, shape {tuple(shape)} needs "
                         f"{math.prod(shape)}")
    return flat.reshape(shape)


def _finish(node: Any, path: str, source: str) -> Any:
    """Reports bad ext records with their path and reassembles chunked arrays."""
    if isinstance(node, _BadLeaf):
        raise CheckpointError(f"{source}: at '{path or '/'}': {node.message}")
    if not isinstance(node, dict):
        return node
    for key in list(node):
        node[key] = _finish(node[key], f"{path}/{key}" if path else str(key), source)
    if CHUNKED_KEY in node:
        try:
            return _unchunk(node, path or "/")
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None
    return node


def restore_bytes(data: bytes, source: str = "<bytes>") -> dict:
    """Decodes msgpack bytes in Flax's format to a nested dict of numpy arrays (msgpack_restore)."""
    try:
        state = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)
    except msgpack.ExtraData as err:
        raise CheckpointError(
            f"{source}: not a Flax msgpack checkpoint: a {type(err.unpacked).__name__} is followed by "
            f"{len(err.extra)} stray bytes (expected one msgpack map filling the file)"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        message = str(err)
        if "incomplete" in message or "exceeds max_" in message:
            reason = f"the data ends early (truncated file? {len(data)} bytes read)"
        else:
            reason = f"not valid msgpack ({message})"
        raise CheckpointError(f"{source}: not a readable Flax msgpack checkpoint: {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{source}: expected a msgpack map (a Flax state dict) at the top level, got "
            f"{type(state).__name__}"
        )
    return _finish(state, "", source)


def latest_checkpoint(directory: str | os.PathLike) -> Path:
    """The `checkpoint_<step>` file with the largest step in a directory (Flax's choice)."""
    directory = Path(directory)
    steps = []
    for entry in directory.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match:
            steps.append((float(match.group(1)), entry))
    if not steps:
        names = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"
        raise CheckpointError(
            f"{directory}: no Flax checkpoint file in this directory: expected a file named "
            f"'checkpoint_<step>' (found {shown})"
        )
    return max(steps, key=lambda s: s[0])[1]


def read_state(path: str | os.PathLike) -> dict:
    """The nested state dict of a Flax msgpack checkpoint file, or of the newest one in a directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (expected a Flax msgpack file or a directory "
                              f"holding 'checkpoint_<step>' files)")
    if path.is_dir():
        path = latest_checkpoint(path)
        if path.is_dir():
            raise CheckpointError(
                f"{path}: this is a directory (an Orbax checkpoint); only Flax's legacy single-file "
                f"msgpack checkpoints can be read"
            )
    return restore_bytes(path.read_bytes(), source=str(path))


def _describe_keys(state: Mapping) -> str:
    return ", ".join(repr(k) for k in list(state)[:12]) + (", ..." if len(state) > 12 else "")


def _has_arrays(tree: Any) -> bool:
    if isinstance(tree, Mapping):
        return any(_has_arrays(v) for v in tree.values())
    return isinstance(tree, np.ndarray)


def extract_params(state: dict, source: str = "checkpoint") -> dict:
    """The param tree of a Scenic train state (optax or flax.optim era), a variables dict, or a bare tree."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source}: expected a non-empty state dict, got {type(state).__name__}")
    params = None
    if "optimizer" in state:
        optimizer = state["optimizer"]
        target = optimizer.get("target") if isinstance(optimizer, Mapping) else None
        if isinstance(target, Mapping):
            # flax.optim era; a lone 'params' entry marks a pre-Linen target.
            params = target["params"] if list(target) == ["params"] else target
        elif "params" not in state:
            inner = _describe_keys(optimizer) if isinstance(optimizer, Mapping) else type(optimizer).__name__
            raise CheckpointError(
                f"{source}: no params found: 'optimizer' has no 'target' param tree (it holds {inner})"
            )
    if params is None and "params" in state:
        params = state["params"]
    if params is None:
        if any(k in state for k in _TRAIN_STATE_KEYS):
            raise CheckpointError(
                f"{source}: no params found: expected top-level 'params' (optax-era Scenic) or "
                f"'optimizer'/'target' (flax.optim era); top-level keys are {_describe_keys(state)}"
            )
        params = state
    if not isinstance(params, Mapping) or not _has_arrays(params):
        raise CheckpointError(
            f"{source}: no params found: the param tree holds no arrays; top-level keys are "
            f"{_describe_keys(state)}"
        )
    return dict(params)


# ----------------------------------------------------------------------------------------------
# Writing


def _to_state_dict(node: Any, path: str) -> Any:
    """Plain dicts with str keys and numpy leaves, as flax.serialization.to_state_dict makes them."""
    if isinstance(node, Mapping):
        out = {str(k): _to_state_dict(v, f"{path}/{k}") for k, v in node.items()}
        if len(out) != len(node):
            raise CheckpointError(f"cannot write '{path or '/'}': its keys do not map to unique strings")
        return out
    if isinstance(node, (list, tuple)):
        return {str(i): _to_state_dict(v, f"{path}/{i}") for i, v in enumerate(node)}
    if node is None or isinstance(node, (bool, int, float, complex, str, bytes, np.ndarray, np.generic)):
        return node
    if hasattr(node, "__array__"):  # tf / jax / keras tensors
        return np.asarray(node)
    raise CheckpointError(f"cannot write '{path or '/'}': unsupported leaf type {type(node).__name__}")


def _array_record(arr: np.ndarray) -> bytes:
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise TypeError(f"object or structured dtype {arr.dtype} cannot be stored")
    if arr.dtype.byteorder == ">":  # the format has no byte order field: it is the reader's native one
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)


def _ext_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(EXT_NDARRAY, _array_record(obj))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(EXT_NPSCALAR, _array_record(np.asarray(obj)))
    if isinstance(obj, complex):
        return msgpack.ExtType(EXT_NATIVE_COMPLEX, msgpack.packb((obj.real, obj.imag)))
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _chunk(arr: np.ndarray) -> dict:
    per_chunk = max(1, MAX_CHUNK_SIZE // arr.dtype.itemsize)
    flat = arr.reshape(-1)
    chunks = [flat[i:i + per_chunk] for i in range(0, flat.size, per_chunk)]
    return {CHUNKED_KEY: True,
            "shape": {str(i): d for i, d in enumerate(arr.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)}}


def _pack_into(fp, packer: msgpack.Packer, node: Any, path: str) -> None:
    """Streams one node to fp, producing the same bytes as one msgpack.packb call on the tree."""
    if isinstance(node, np.ndarray) and node.nbytes > MAX_CHUNK_SIZE:
        node = _chunk(node)
    if isinstance(node, dict):
        fp.write(packer.pack_map_header(len(node)))
        for key, value in node.items():
            fp.write(packer.pack(key))
            _pack_into(fp, packer, value, f"{path}/{key}" if path else key)
        return
    try:
        fp.write(packer.pack(node))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot write '{path or '/'}': {err}") from None


def write_state(path: str | os.PathLike, state: dict) -> None:
    """Writes a state dict as a Flax msgpack file (msgpack_restore reads it); atomic via os.replace."""
    path = Path(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: the state to write must be a dict, got {type(state).__name__}")
    tree = _to_state_dict(state, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fp:
        # strict_types as in Flax: tuples never reach here (made into maps) and subclasses go to default.
        packer = msgpack.Packer(default=_ext_default, strict_types=True, use_bin_type=True)
        _pack_into(fp, packer, tree, "")


LAYOUTS = ("optax", "flax_optim")


def scenic_train_state(params: dict, *, step: int = 0, layout: str = "optax") -> dict:
    """A Scenic train-state dict around params: optax era, or the 2022 flax.optim era."""
    rng = np.zeros((2,), np.uint32)  # a jax.random.PRNGKey(0)
    if layout == "optax":
        return {"params": params, "opt_state": {}, "global_step": int(step), "model_state": {},
                "rng": rng, "metadata": {}}
    if layout == "flax_optim":
        return {"global_step": int(step),
                "optimizer": {"target": params,
                              "state": {"step": np.asarray(step, np.int32), "param_states": {}}},
                "model_state": {}, "rng": rng, "accum_train_time": 0.0}
    raise CheckpointError(f"unknown checkpoint layout '{layout}'; expected one of {', '.join(LAYOUTS)}")


def write_checkpoint(path: str | os.PathLike, params: dict, *, step: int = 0, layout: str = "optax") -> Path:
    """Writes params in a Scenic train-state layout; into `<dir>/checkpoint_<step>` if path is a directory."""
    state = scenic_train_state(params, step=step, layout=layout)
    path = Path(path)
    if path.is_dir():
        path = path / f"checkpoint_{int(step)}"
    write_state(path, state)
    return path


# ----------------------------------------------------------------------------------------------
# Flat <-> nested


def flatten(tree: dict, sep: str = "/") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}; empty sub-dicts are dropped."""
    flat: dict[str, Any] = {}

    def visit(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            key = str(key)
            if sep in key:
                raise CheckpointError(f"cannot flatten: key '{prefix}{key}' contains the separator '{sep}'")
            if isinstance(value, Mapping):
                visit(value, f"{prefix}{key}{sep}")
            else:
                flat[f"{prefix}{key}"] = value

    visit(tree, "")
    return flat


def unflatten(flat: dict, sep: str = "/") -> dict:
    """{'a/b': x} -> {'a': {'b': x}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(sep)
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = sep.join(parts[:depth + 1])
                raise CheckpointError(f"cannot unflatten: '{prefix}' is both a leaf and a prefix of '{key}'")
            node = child
        if parts[-1] in node:
            raise CheckpointError(f"cannot unflatten: '{key}' is both a leaf and a prefix of other keys")
        node[parts[-1]] = value
    return tree
