"""Scenic/Flax parameters <-> Keras MTV/M&M weights. The mapping is each layer's `flax_params()` table."""

from __future__ import annotations

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
    '/'-joined flat params, or a nested/flat mapping of arrays. A `num_classes` different from the
    checkpoint's head replaces the head with a freshly initialised one (for fine-tuning) and says so.
    `input_shape` overrides the RGB input (T, H, W[, C]); `input_shapes` any stream's.
    """
    from mtv.models.mtv_classifier import MTVClassifier
    from mtv.models.spec import spec_from_config

    flat = load_flat_params(params)
    ckpt_classes = int(flat["output_projection/bias"].shape[0]) if "output_projection/bias" in flat else None
    shapes = dict(input_shape=input_shape, input_shapes=input_shapes)
    try:
        spec = spec_from_config(config, num_classes=num_classes, class_splits=class_splits,
                                split_names=split_names, **shapes)
    except ConfigError as e:
        if "number of classes is unknown" not in str(e) or ckpt_classes is None:
            raise
        spec = spec_from_config(config, num_classes=ckpt_classes, class_splits=class_splits,
                                split_names=split_names, **shapes)
    model = MTVClassifier.from_spec(spec)
    if spec["final_endpoint"] == "pre_logits" and any(k.startswith(HEAD) for k in flat):
        logging.info("final_endpoint 'pre_logits': the checkpoint's output_projection is not used")
        flat = {k: v for k, v in flat.items() if not k.startswith(HEAD)}
        ckpt_classes = None
    replace_head = ckpt_classes is not None and ckpt_classes != spec["num_classes"]
    if replace_head:
        logging.warning("checkpoint head has %d classes, the model %d: output_projection is re-initialised "
                        "(fine-tuning); every other weight is loaded", ckpt_classes, spec["num_classes"])
        flat = {k: v for k, v in flat.items() if not k.startswith(HEAD)}
    assign_flax_params(model, flat, skip_prefixes=(HEAD,) if replace_head else ())
    return model


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
        if want != got:
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
