"""Training checkpoints: model weights (by Scenic/Flax name), optimizer state and step, written atomically.

A checkpoint is one `.npz` file `<workdir>/checkpoints/ckpt_<step>.npz` holding
  `params/<flax path>`  every model weight under its Scenic name (readable by `mtv.from_scenic`'s npz
                        loader after dropping the other keys, see `read_params`),
  `opt/<index>`         every optimizer variable (iterations, momenta) in the optimizer's order,
  `rng/<index>`         the model's random-number states (stochastic depth, dropout) in the model's
                        order, so a resumed run draws the same masks as an uninterrupted one,
  `meta`                JSON: step, optimizer variable names and shapes, anything the trainer adds.
It is written to a temporary file in the same directory, flushed, fsynced and renamed into place, so a
run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from absl import logging

from mtv.errors import CheckpointError
from mtv.utils.fileio import atomic_path, writing

PATTERN = re.compile(r"ckpt_(\d+)\.npz$")


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(workdir) / "checkpoints"


def list_checkpoints(workdir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(workdir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(workdir)
    return found[-1][1] if found else None


def _value(var) -> np.ndarray:
    return np.asarray(var.numpy() if hasattr(var, "numpy") else var)


def save_checkpoint(workdir: str | os.PathLike, step: int, model, optimizer=None, *, meta: dict | None = None,
                    keep: int = 3) -> Path:
    """Writes `ckpt_<step>.npz` atomically and deletes all but the newest `keep` checkpoints."""
    folder = checkpoint_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"params/{k}": _value(v) for k, v in model.flax_params().items()}
    opt_vars = list(optimizer.variables) if optimizer is not None else []
    for i, var in enumerate(opt_vars):
        arrays[f"opt/{i}"] = _value(var)
    for i, var in enumerate(_rng_states(model)):
        arrays[f"rng/{i}"] = _value(var)
    info = {"step": int(step), "optimizer": [[v.path, list(v.shape)] for v in opt_vars], **(meta or {})}
    arrays["meta"] = np.asarray(json.dumps(info, default=str))
    path = folder / f"ckpt_{int(step):08d}.npz"
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    for _, old in list_checkpoints(workdir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    logging.info("saved checkpoint %s", path)
    return path


def _rng_states(model) -> list:
    """The model's seed-generator states (its non-trainable variables), in the model's fixed order."""
    return [v for v in getattr(model, "non_trainable_variables", []) if "seed_generator_state" in v.path]


def _restore_rng(path: Path, model) -> None:
    with np.load(path, allow_pickle=False) as data:
        values = [data[f"rng/{i}"] for i in range(sum(1 for k in data.files if k.startswith("rng/")))]
    states = _rng_states(model)
    if not values and states:
        logging.warning("'%s' holds no random-number states (written by an older mtv): dropout and stochastic "
                        "depth masks after resuming differ from an uninterrupted run's", path)
        return
    if len(values) != len(states) or any(tuple(v.shape) != x.shape for v, x in zip(states, values, strict=True)):
        raise CheckpointError(f"'{path}' holds {len(values)} random-number states, the model has {len(states)}; "
                              "was it written by a different model?")
    for var, value in zip(states, values, strict=True):
        var.assign(value.astype(var.dtype))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[np.ndarray], dict]:
    """(params by Flax path, optimizer values, meta) of a checkpoint file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            params = {k[len("params/"):]: data[k] for k in data.files if k.startswith("params/")}
            count = sum(1 for k in data.files if k.startswith("opt/"))
            opt = [data[f"opt/{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{path}' is not a readable mtv training checkpoint: {e}") from e
    return params, opt, meta


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Only the model weights of a checkpoint, by Scenic/Flax path (for evaluation or export)."""
    return read_checkpoint(path)[0]


def restore_checkpoint(path: str | os.PathLike, model, optimizer=None) -> dict:
    """Loads a checkpoint into `model` (and `optimizer`, which must be built); returns its meta."""
    from mtv.io.scenic import assign_flax_params

    params, opt_values, meta = read_checkpoint(path)
    assign_flax_params(model, params)
    if optimizer is not None:
        variables = list(optimizer.variables)
        if len(variables) != len(opt_values):
            raise CheckpointError(f"'{path}' holds {len(opt_values)} optimizer variables, the optimizer has "
                                  f"{len(variables)}; was it written by a different model or optimizer?")
        for var, value in zip(variables, opt_values, strict=True):
            if tuple(var.shape) != value.shape:
                raise CheckpointError(f"'{path}': optimizer variable '{var.path}' has shape {value.shape}, "
                                      f"expected {tuple(var.shape)}")
            var.assign(value.astype(var.dtype))
    _restore_rng(Path(path), model)
    return meta
