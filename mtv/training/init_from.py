"""Initialise an MTV for fine-tuning: from another MTV (zoo model, preset, Scenic checkpoint) or from one
2-D ViT image checkpoint per view, following Scenic's `projects/mtv/model_utils.py` and ViViT's
`init_posemb` (google-research/scenic, read at commit a6c4438309527730cde7c9c59d15c74e6113ea0a).

From ViT, for view i (see MTV_REFERENCE.md section (c)):
  embedding/kernel (ph', pw', 3, c)   -> temporal slice pt_i // 2 of a zero (pt_i, ph_i, pw_i, 3, c)
                                         kernel, bilinearly resized first if (ph', pw') != (ph_i, pw_i)
  cls (1, 1, c)                        -> cls_view{i} tiled to (1, t_i, 1, c)
  Transformer/posembed_input           -> MultiviewEncoder/posembed_input_view{i} (copied, or CLS row
                                          kept and the grid changed by 'tile' / 'resize' / 'resize_tile')
  Transformer/encoderblock_l           -> MultiviewEncoder/encoderblock_l_view{i}, or the msa/mlp parts
                                          of MultiviewEncoder/cross_view_encoderblock_l for fused layers
Everything else (cross-view attention, global encoder, head) keeps its random initialisation.

An M&M model (several streams) initialised from an RGB MTV takes every stream from it through
`mtv.training.multimodal_init` (docs/multimodal.md); from an M&M of the same layout, by name as above.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from mtv.errors import CheckpointError, ConfigError

HEAD = "output_projection/"


# ------------------------------------------------------------------------------------ interpolation
def zoom_linear(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling to `shape`, as `scipy.ndimage.zoom(order=1)` (corners aligned, axis by axis)."""
    out = np.asarray(array, np.float64)
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        if n == size:
            continue
        pos = np.arange(size) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
        lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
        hi = np.minimum(lo + 1, n - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out.astype(np.asarray(array).dtype)


def _grid_shape(count: int) -> tuple[int, int]:
    side = int(round(np.sqrt(count)))
    if side * side != count:
        raise CheckpointError(f"a positional table of {count} grid tokens is not square; cannot resize it")
    return side, side


def adapt_posemb(restored: np.ndarray, target_shape: tuple, *, grid: tuple[int, int], target_cls: bool,
                 restored_cls: bool, size_change: str, temporal: bool = False) -> np.ndarray:
    """ViViT's `init_posemb`: keep the CLS row, change the grid part by 'resize', 'tile' or 'resize_tile'."""
    restored = np.asarray(restored)
    if tuple(restored.shape) == tuple(target_shape):
        return restored
    ntok = target_shape[1] - (1 if target_cls else 0)
    body = restored[0, 1:] if restored_cls else restored[0]
    cls = restored[:, :1] if (restored_cls and target_cls) else np.zeros((1, 1 if target_cls else 0,
                                                                          restored.shape[-1]), restored.dtype)
    if len(body) != ntok:
        if temporal:
            body = zoom_linear(body, (ntok, body.shape[-1]))
        elif size_change in ("resize", "resize_tile"):
            side = _grid_shape(len(body))
            body = zoom_linear(body.reshape(*side, -1), (*grid, body.shape[-1])).reshape(ntok, -1)
        elif size_change == "tile":
            if ntok % len(body):
                raise CheckpointError(
                    f"positional_embed_size_change 'tile' cannot turn {len(body)} grid tokens into {ntok}; "
                    "use 'resize' (the view's image grid differs from the checkpoint's)")
            body = np.tile(body, (ntok // len(body), 1))
        else:
            raise ConfigError(f"init_from.positional_embed_size_change is {size_change!r}; expected "
                              "'resize', 'tile' or 'resize_tile'")
    return np.concatenate([cls, body[None]], axis=1) if target_cls else body[None]


# --------------------------------------------------------------------------------- reading ViT files
def convert_pre_linen(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax's pre-Linen renaming: within each module, `Name_k` are renumbered 0, 1, ... per Name, in order
    of k (e.g. ViT's MultiHeadDotProductAttention_1 -> _0, MlpBlock_3 -> _0, LayerNorm_2 -> _1)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def renumber(node):
        if not isinstance(node, dict):
            return node
        groups: dict[str, list[tuple[int, str]]] = {}
        for name in node:
            m = re.fullmatch(r"(.*)_(\d+)", name)
            if m and isinstance(node[name], dict):
                groups.setdefault(m.group(1), []).append((int(m.group(2)), name))
        rename = {}
        for prefix, items in groups.items():
            for new, (_, old) in enumerate(sorted(items)):
                rename[old] = f"{prefix}_{new}"
        return {rename.get(k, k): renumber(v) for k, v in node.items()}

    out: dict[str, np.ndarray] = {}

    def flatten(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                flatten(v, f"{prefix}{k}/")
            else:
                out[f"{prefix}{k}"] = v

    flatten(renumber(tree))
    return out


def read_vit_params(source: Any, checkpoint_format: str = "big_vision") -> dict[str, np.ndarray]:
    """Flat Scenic-ViT params ('embedding/kernel', 'cls', 'Transformer/encoderblock_0/...') of a ViT file.

    'big_vision': an .npz of '/'-joined keys, under `params/` or `opt/target/` or at the top (the
    google-research/vision_transformer files); module numbers are converted from pre-Linen.
    'scenic': a Flax msgpack checkpoint (file or directory of checkpoint_<N>). A mapping is used as is.
    """
    if isinstance(source, Mapping):
        from mtv.io.scenic import load_flat_params

        return load_flat_params(source)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"ViT checkpoint '{path}' does not exist")
    if checkpoint_format == "big_vision":
        try:
            with np.load(path, allow_pickle=False) as data:
                flat = {k: data[k] for k in data.files}
        except Exception as e:  # numpy raises several types for a bad archive
            raise CheckpointError(f"cannot read ViT checkpoint '{path}' as a big_vision .npz: {e}") from e
        for prefix in ("opt/target/", "params/"):
            if any(k.startswith(prefix) for k in flat):
                flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
                break
        return convert_pre_linen(flat)
    if checkpoint_format == "scenic":
        from mtv.io.scenic import load_flat_params

        return load_flat_params(path)
    raise ConfigError(f"init_from.checkpoint_formats entry {checkpoint_format!r}: expected 'big_vision' or 'scenic'")


# ------------------------------------------------------------------------------------ ViT -> MTV
_BLOCK_PARTS = {"LayerNorm_0": "msa_ln", "MultiHeadDotProductAttention_0": "msa", "LayerNorm_1": "mlp_ln",
                "MlpBlock_0": "mlp"}


def _assign(table: Mapping, key: str, value: np.ndarray, source: str) -> None:
    var = table[key]
    if tuple(var.shape) != tuple(np.shape(value)):
        raise CheckpointError(f"{source}: '{key}' has shape {tuple(np.shape(value))}, the model expects "
                              f"{tuple(var.shape)} (does the ViT's width/heads/mlp match the view?)")
    var.assign(np.asarray(value).astype(var.dtype))


def init_view_from_vit(model, vit: Mapping[str, np.ndarray], view: int, *, restore_positional_embedding=True,
                       restore_input_embedding=True, positional_embed_size_change: str = "tile",
                       vit_classifier: str = "token", source: str = "ViT checkpoint") -> list[str]:
    """Loads one ViT's weights into view `view` of `model`; returns the model keys it wrote."""
    table = model.flax_params()
    spec, geo = model.spec, model.geometry
    token = spec["classifier"] == "token"
    written: list[str] = []
    for key, value in vit.items():
        value = np.asarray(value)
        if key in ("embedding/kernel", "embedding/bias"):
            if not restore_input_embedding:
                continue
            name = f"embedding_view{view}/{key.split('/')[1]}"
            if key.endswith("kernel"):
                target = table[name].shape  # (pt, ph, pw, 3, c)
                if value.ndim != 4:
                    raise CheckpointError(f"{source}: 'embedding/kernel' must be (h, w, 3, c), got {value.shape}")
                if value.shape[:2] != tuple(target[1:3]):
                    flat = value.reshape(value.shape[0], value.shape[1], -1)
                    value = zoom_linear(flat, (target[1], target[2], flat.shape[-1])).reshape(
                        target[1], target[2], *value.shape[2:])
                kernel = np.zeros(target, value.dtype)
                if kernel.shape[1:] != value.shape:
                    raise CheckpointError(f"{source}: embedding kernel {value.shape} does not fit view {view}'s "
                                          f"{tuple(target)} (channels or width differ)")
                kernel[target[0] // 2] = value  # central-frame initialisation
                value = kernel
            _assign(table, name, value, source)
            written.append(name)
        elif key == "cls":
            if token:
                name = f"cls_view{view}"
                t = geo["views"][view]["temporal_tokens"]
                _assign(table, name, np.tile(value.reshape(1, 1, 1, -1), (1, t, 1, 1)), source)
                written.append(name)
        elif key == "Transformer/posembed_input/pos_embedding":
            if not restore_positional_embedding:
                continue
            name = f"MultiviewEncoder/posembed_input_view{view}/pos_embedding"
            value = adapt_posemb(value, tuple(table[name].shape), grid=geo["views"][view]["grid"],
                                 target_cls=token, restored_cls=vit_classifier == "token",
                                 size_change=positional_embed_size_change)
            _assign(table, name, value, source)
            written.append(name)
        elif m := re.fullmatch(r"Transformer/(encoderblock_\d+)/([^/]+)/(.+)", key):
            block, part, rest = m.groups()
            plain = f"MultiviewEncoder/{block}_view{view}/{part}/{rest}"
            fused_prefix = f"MultiviewEncoder/cross_view_{block}/"
            if plain in table:
                name = plain
            elif part in _BLOCK_PARTS and f"{fused_prefix}{_BLOCK_PARTS[part]}_view{view}/{rest}" in table:
                name = f"{fused_prefix}{_BLOCK_PARTS[part]}_view{view}/{rest}"
            else:
                logging.info("%s: '%s' has no place in view %d (the view is shallower); skipped", source, key, view)
                continue
            _assign(table, name, value, source)
            written.append(name)
        else:
            logging.info("%s: '%s' is not restored into MTV (as Scenic)", source, key)
    if not written:
        raise CheckpointError(f"{source}: no ViT weight could be used for view {view}; expected Scenic ViT names "
                              "('embedding/kernel', 'cls', 'Transformer/encoderblock_0/...')")
    return written


def init_from_vit(model, sources: list, *, checkpoint_formats=None, model_cfgs=None, **options) -> None:
    """One ViT (path or mapping) per view, in view order."""
    views = len(model.spec["views"])
    if len(sources) != views:
        raise ConfigError(f"init_from.checkpoint_path lists {len(sources)} ViT checkpoints; the model has "
                          f"{views} views and needs one per view")
    formats = list(checkpoint_formats or ["scenic"] * views)
    if len(formats) != views:
        raise ConfigError(f"init_from.checkpoint_formats has {len(formats)} entries for {views} views")
    for i, (src, fmt) in enumerate(zip(sources, formats, strict=True)):
        classifier = "token"
        if model_cfgs:
            classifier = ((model_cfgs[i] or {}).get("model") or {}).get("classifier", "token")
        vit = read_vit_params(src, fmt)
        init_view_from_vit(model, vit, i, vit_classifier=classifier, source=f"ViT checkpoint '{src}'"
                           if not isinstance(src, Mapping) else f"ViT params of view {i}", **options)
        logging.info("view %d initialised from ViT %s", i, src if not isinstance(src, Mapping) else "(mapping)")


# ------------------------------------------------------------------------------------ MTV -> MTV
def init_from_mtv(model, restored: Mapping[str, np.ndarray], *, restore_output_projection: bool = False,
                  positional_embed_size_change: str = "resize", source: str = "checkpoint") -> None:
    """Scenic's `initialize_from_mtv_parameters`: every weight by name, with shape changes interpolated."""
    table = model.flax_params()
    spec, geo = model.spec, model.geometry
    token = spec["classifier"] == "token"
    missing = []
    for key, var in table.items():
        if key.startswith(HEAD) and not restore_output_projection:
            continue
        if key not in restored:
            missing.append(key)
            continue
        value = np.asarray(restored[key])
        target = tuple(var.shape)
        if key.startswith(HEAD) and value.shape != target:
            raise CheckpointError(f"{source}: the checkpoint's head '{key}' has shape {value.shape}, the model's "
                                  f"{target} (a different number of classes); set "
                                  "init_from.restore_output_projection=False to start a new head")
        if value.shape != target:
            if key == "bottleneck" or re.fullmatch(r"cls_view\d+", key):
                value = zoom_linear(value, (value.shape[0], target[1], *value.shape[2:]))
            elif re.fullmatch(r"embedding_view\d+/kernel", key):
                value = zoom_linear(value, (*target[:3], *value.shape[3:]))
            elif key == "global_encoder/posembed_input/pos_embedding":
                value = adapt_posemb(value, target, grid=(0, 0), target_cls=token, restored_cls=token,
                                     size_change="resize", temporal=True)
            elif m := re.fullmatch(r"MultiviewEncoder/posembed_input_view(\d+)/pos_embedding", key):
                value = adapt_posemb(value, target, grid=geo["views"][int(m.group(1))]["grid"],
                                     target_cls=token, restored_cls=token,
                                     size_change=positional_embed_size_change)
        _assign(table, key, value, source)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} model weight(s) are not in the checkpoint, e.g. "
                              f"{missing[:6]}; is it an MTV of the same variant?")


def _restored_mtv_params(path_or_name: str) -> dict[str, np.ndarray]:
    """Flat MTV params of a training checkpoint, a preset, a Scenic checkpoint/npz, or a zoo handle."""
    from mtv.io import presets
    from mtv.io.scenic import load_flat_params
    from mtv.training import checkpoints

    path = Path(os.fspath(path_or_name))
    if path.is_dir() and checkpoints.latest_checkpoint(path) is not None:
        return checkpoints.read_params(checkpoints.latest_checkpoint(path))
    if path.is_file() and checkpoints.PATTERN.match(path.name):
        return checkpoints.read_params(path)
    if presets.is_preset(path):
        restored = presets.load_preset(path)
        return {k: np.asarray(v.numpy()) for k, v in restored.flax_params().items()}
    if path.exists():
        return load_flat_params(path)
    try:
        import mtv

        restored = mtv.load(str(path_or_name))
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"init_from.checkpoint_path '{path_or_name}' is not a file or directory, and zoo "
                          f"loading is unavailable ({e})") from e
    return {k: np.asarray(v.numpy()) for k, v in restored.flax_params().items()}


def _restored_mtv_source(path_or_name: str):
    """An MTV model where one can be built (preset, zoo name, a run with its config.json: its token geometry is
    then known), else the flat params of a training checkpoint or Scenic checkpoint / .npz."""
    from mtv.io import presets
    from mtv.io.scenic import load_flat_params
    from mtv.training import checkpoints

    path = Path(os.fspath(path_or_name))
    ckpt, run = None, None
    if path.is_dir() and checkpoints.latest_checkpoint(path) is not None:
        ckpt, run = checkpoints.latest_checkpoint(path), path
    elif path.is_file() and checkpoints.PATTERN.match(path.name):
        ckpt, run = path, path.parent.parent
    if ckpt is not None:
        if (run / "config.json").is_file():
            from mtv.eval.evaluate import load_for_eval

            return load_for_eval(checkpoint=ckpt, config=str(run / "config.json"))
        return checkpoints.read_params(ckpt)
    if presets.is_preset(path):
        return presets.load_preset(path)
    if path.exists():
        return load_flat_params(path)
    import mtv

    return mtv.load(str(path_or_name))


def _initialize_multimodal(model, path: str, init: Mapping) -> str:
    """M&M from an RGB MTV (`multimodal_init`), or by name from an M&M checkpoint of the same layout."""
    from mtv.training import multimodal_init

    source = _restored_mtv_source(path)
    flat = source if isinstance(source, Mapping) else {
        k: np.asarray(v.numpy()) for k, v in source.flax_params().items()}
    restore_head = bool(init.get("restore_output_projection", False))
    wanted = [k for k in model.flax_params() if not k.startswith(HEAD)]
    if all(k in flat for k in wanted):  # the same streams: a plain MTV -> MTV init
        init_from_mtv(model, flat, restore_output_projection=restore_head,
                      positional_embed_size_change=init.get("positional_embed_size_change", "resize"),
                      source=f"init_from.checkpoint_path '{path}'")
        return f"initialised by name from M&M '{path}'"
    report = multimodal_init.init_from_mtv(model, source, restore_output_projection=restore_head)
    return (f"every stream initialised from MTV '{path}' ({len(report['copied'])} weights copied, "
            f"{len(report['adapted'])} adapted, {len(report['initialised'])} left as initialised)")


def initialize(model, config: Any) -> str:
    """Applies `config.init_from` to a freshly built model; returns a one-line description."""
    init = config.get("init_from")
    if not init:
        return "random initialisation"
    init = init.to_dict() if hasattr(init, "to_dict") else dict(init)
    model_type = init.get("model_type", "mtv")
    path = init.get("checkpoint_path")
    if not path:
        raise ConfigError("init_from is set but init_from.checkpoint_path is empty")
    if model_type == "vit":
        paths = list(path) if isinstance(path, (list, tuple)) else [path]
        init_from_vit(model, paths, checkpoint_formats=init.get("checkpoint_formats"),
                      model_cfgs=init.get("model_cfg") if isinstance(init.get("model_cfg"), list) else None,
                      restore_positional_embedding=init.get("restore_positional_embedding", True),
                      restore_input_embedding=init.get("restore_input_embedding", True),
                      positional_embed_size_change=init.get("positional_embed_size_change", "tile"))
        return f"views initialised from ViT checkpoints {paths}"
    if model_type in ("mtv", "zoo", "preset") and list(getattr(model, "modalities", ["rgb"])) != ["rgb"]:
        return _initialize_multimodal(model, path, init)
    if model_type in ("mtv", "zoo", "preset"):
        restored = _restored_mtv_params(path)
        init_from_mtv(model, restored, restore_output_projection=init.get("restore_output_projection", False),
                      positional_embed_size_change=init.get("positional_embed_size_change", "resize"),
                      source=f"init_from.checkpoint_path '{path}'")
        return f"initialised from MTV '{path}' (head re-initialised)"
    raise ConfigError(f"init_from.model_type is {model_type!r}; expected 'vit', 'mtv', 'zoo' or 'preset'")
