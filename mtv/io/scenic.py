"""Scenic/Flax parameters <-> Keras MTV/M&M weights. The mapping is each layer's `flax_params()` table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from mtv.errors import CheckpointError, ConfigError

HEAD = "output_projection/"


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def load_flat_params(params: Any) -> dict[str, np.ndarray]:
    """Any supported params source -> {'a/b/kernel': array} without a leading 'params/'."""
    source = "the given mapping"
    if isinstance(params, (str, os.PathLike)):
        path = Path(params)
        source = str(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint '{path}' does not exist")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as data:
                    flat = {k: data[k] for k in data.files}
            except Exception as e:  # numpy raises several types for a bad archive
                raise CheckpointError(f"cannot read '{path}' as an .npz of flat params: {e}") from e
        else:
            from mtv.io import flax_msgpack
            flat = _flatten(flax_msgpack.extract_params(flax_msgpack.read_state(path)))
    elif isinstance(params, Mapping):
        flat = _flatten(params)
        if set(flat) and all(k.startswith("params/") for k in flat):
            flat = {k[len("params/"):]: v for k, v in flat.items()}
    else:
        raise CheckpointError(f"params must be a checkpoint path, an .npz or a mapping, got {type(params).__name__}")
    if not flat:
        raise CheckpointError(f"no parameters found in {source}")
    out = {}
    for key, value in flat.items():
        key = key[len("params/"):] if key.startswith("params/") else key
        out[key] = np.asarray(value)
    return out


def from_scenic(config: Any, params: Any, *, num_classes: int | None = None, class_splits=None,
                split_names=None, input_shape=None, input_shapes: Mapping | None = None):
    """Builds an MTV (or M&M) classifier from a Scenic config and loads Scenic's weights (strict, by Flax path).

    `params`: a Flax msgpack checkpoint file, a directory of `checkpoint_<N>` files, an `.npz` of
    '/'-joined flat params, or a nested/flat mapping of arrays. An explicit `num_classes` different from
    the checkpoint's head replaces the head with a freshly initialised one (for fine-tuning) and says so;
    a config whose class count differs from the checkpoint's head is an error.
    `input_shape` overrides the RGB input (T, H, W[, C]); `input_shapes` any stream's. A config that states
    no input size (Scenic infers it at init) gets it from the positional embeddings and tubelet sizes.
    """
    from mtv.layers.common import skip_random_init
    from mtv.models.mtv_classifier import MTVClassifier
    from mtv.models.spec import read_config, spec_from_config

    flat = load_flat_params(params)
    ckpt_classes = int(flat["output_projection/bias"].shape[0]) if "output_projection/bias" in flat else None
    config = read_config(config)
    if input_shape is None and "rgb" not in (input_shapes or {}):
        input_shape = _inferred_input_shape(config, flat)
    shapes = dict(input_shape=input_shape, input_shapes=input_shapes)
    try:
        spec = spec_from_config(config, num_classes=num_classes, class_splits=class_splits,
                                split_names=split_names, **shapes)
    except ConfigError as e:
        if "number of classes is unknown" not in str(e) or ckpt_classes is None:
            raise
        spec = spec_from_config(config, num_classes=ckpt_classes, class_splits=class_splits,
                                split_names=split_names, **shapes)
    with skip_random_init():  # every weight is assigned below; a replaced head starts at zeros, as Scenic's
        model = MTVClassifier.from_spec(spec)
    if spec["final_endpoint"] == "pre_logits" and any(k.startswith(HEAD) for k in flat):
        logging.info("final_endpoint 'pre_logits': the checkpoint's output_projection is not used")
        flat = {k: v for k, v in flat.items() if not k.startswith(HEAD)}
        ckpt_classes = None
    replace_head = ckpt_classes is not None and ckpt_classes != spec["num_classes"]
    if replace_head and num_classes is None:
        raise CheckpointError(
            f"the checkpoint's head (output_projection) has {ckpt_classes} classes but the config says "
            f"{spec['num_classes']}: is it the checkpoint of this config? To fine-tune with a new, freshly "
            f"initialised {spec['num_classes']}-class head, pass num_classes={spec['num_classes']} explicitly")
    if replace_head:
        logging.warning("checkpoint head has %d classes, the model %d: output_projection is re-initialised "
                        "(fine-tuning); every other weight is loaded", ckpt_classes, spec["num_classes"])
        flat = {k: v for k, v in flat.items() if not k.startswith(HEAD)}
    assign_flax_params(model, flat, skip_prefixes=(HEAD,) if replace_head else ())
    return model


def _inferred_input_shape(cfg: Mapping, flat: Mapping[str, np.ndarray]) -> tuple[int, int, int] | None:
    """(T, H, W) of a plain MTV config that states no input size, read off the checkpoint; None when stated.

    Scenic infers the input geometry at init, so its configs may omit `dataset_configs.crop_size`. The
    positional table of view i holds grid_h * grid_w (+1 CLS) tokens and its tubelet kernel is (t, h, w, C, D):
    a square grid gives H = grid * h; the frames come from `dataset_configs.num_frames` or cls_view{i}'s
    temporal tokens * t.
    """
    if "config" in cfg and "model" not in cfg:  # a fixture-style JSON; its input_shape states the size
        if cfg.get("input_shape"):
            return None
        cfg = cfg.get("config") or {}
    model, ds = cfg.get("model"), cfg.get("dataset_configs") or {}
    if not isinstance(model, Mapping) or model.get("modalities") is not None or ds.get("crop_size") is not None:
        return None
    hint = ("the config states no input size (dataset_configs.crop_size) and it cannot be inferred from the "
            "checkpoint ({}); pass input_shape=(T, H, W) to mtv.from_scenic")
    cls = 1 if model.get("classifier", "token") == "token" else 0
    sizes, frames, view = set(), set(), 0
    while f"embedding_view{view}/kernel" in flat:
        kernel = np.shape(flat[f"embedding_view{view}/kernel"])
        pos = flat.get(f"MultiviewEncoder/posembed_input_view{view}/pos_embedding")
        if pos is None or len(kernel) != 5 or len(np.shape(pos)) != 3:
            raise CheckpointError(hint.format(f"view {view} has no 3-D positional table or 5-D tubelet kernel"))
        tokens = np.shape(pos)[1] - cls
        side = math.isqrt(max(tokens, 0))
        if side == 0 or side * side != tokens:
            raise CheckpointError(hint.format(f"view {view}'s positional table has {tokens} spatial tokens, "
                                              "not a square grid"))
        sizes.add((side * kernel[1], side * kernel[2]))
        if f"cls_view{view}" in flat and len(np.shape(flat[f"cls_view{view}"])) == 4:
            frames.add(np.shape(flat[f"cls_view{view}"])[1] * kernel[0])
        view += 1
    if view == 0:
        return None
    if len(sizes) > 1:
        raise CheckpointError(hint.format(f"the views' positional tables imply different sizes {sorted(sizes)}"))
    num_frames = ds.get("num_frames")
    if num_frames is None:
        if len(frames) != 1:
            raise CheckpointError(hint.format("dataset_configs.num_frames is not set and the CLS tokens do not "
                                              "give one frame count"))
        num_frames = frames.pop()
    (height, width), = sizes
    logging.info("the config states no input size: inferred %d frames of %dx%d from the checkpoint's positional "
                 "embeddings and tubelet sizes (pass input_shape= to set it)", num_frames, height, width)
    return int(num_frames), int(height), int(width)


def assign_flax_params(model, flat: Mapping[str, np.ndarray], *, skip_prefixes: tuple = ()) -> None:
    """Writes every flat Flax param into its Keras weight; any missing, extra or mis-shaped one is an error."""
    table = model.flax_params()
    expected = {k for k in table if not k.startswith(skip_prefixes)}
    missing = sorted(expected - set(flat))
    extra = sorted(set(flat) - set(table))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weight(s) missing from the checkpoint: {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} checkpoint param(s) with no place in the model: {extra[:8]}")
    for key in sorted(expected & set(flat)):
        want, got = tuple(table[key].shape), tuple(np.shape(flat[key]))
        dtype = np.asarray(flat[key]).dtype
        if dtype.kind not in "fiu" and "float" not in dtype.name:  # bfloat16/float8 (ml_dtypes) are floats too
            problems.append(f"param '{key}' has dtype {dtype}, not a number type (expected float weights)")
        elif want != got:
            problems.append(f"param '{key}' has shape {got}, the model expects {want}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config:\n  " + "\n  ".join(problems))
    for key in expected:
        var = table[key]
        var.assign(np.asarray(flat[key]).astype(var.dtype))


def to_scenic(model, path: str | os.PathLike | None = None, *, layout: str = "optax", step: int = 0) -> dict:
    """An mtv model -> Scenic's nested param dict; with `path`, also writes a Flax msgpack checkpoint."""
    nested: dict = {}
    for key, var in model.flax_params().items():
        node = nested
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
    if path is not None:
        from mtv.io import flax_msgpack
        flax_msgpack.write_checkpoint(path, nested, step=step, layout=layout)
    return nested
