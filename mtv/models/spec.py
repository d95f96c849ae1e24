"""Scenic experiment config -> the plain, validated model spec our Keras model is built from.

A spec is a JSON-able dict. It keeps Scenic's field names for the model and records the input
shape, because MTV's CLS tokens and positional tables depend on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from mtv.errors import ConfigError

MODEL_FIELDS = {
    "view_configs", "cross_view_fusion", "temporal_encoding_config", "global_encoder_config",
    "dropout_rate", "attention_dropout_rate", "stochastic_depth", "classifier",
    "keep_spatiotemporal_features", "final_endpoint", "data_dtype_str", "model_dtype_str",
}
VIEW_FIELDS = {"hidden_size", "num_heads", "mlp_dim", "num_layers", "patches"}
FUSION_FIELDS = {"type", "fusion_layers", "fuse_in_descending_order", "use_query_config", "bottleneck_tokens"}
GLOBAL_FIELDS = {"num_heads", "mlp_dim", "num_layers", "hidden_size", "merge_axis"}
TEMPORAL_FIELDS = {"method", "kernel_init_method"}
CLASSIFIERS = ("token", "gap", "gmp", "gsp", "0")
FUSION_TYPES = ("cross_view_attention", "bottleneck")


def to_plain(value: Any) -> Any:
    """ConfigDict / FrozenConfigDict / tuples -> plain dicts and lists."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def read_config(config: Any) -> dict:
    """Accepts a ConfigDict, a dict, a JSON file, or a config .py path/name, returns a plain dict."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if path.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"cannot read config JSON '{path}': {e}") from e
            return to_plain(data)
        from mtv.io.configs import load_config

        return to_plain(load_config(path))
    return to_plain(config)


def check_fields(section: Mapping, allowed: set, where: str) -> None:
    """Raises ConfigError for a field not in `allowed`, suggesting the closest known name."""
    import difflib

    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown field '{where}.{key}'{hint}; known fields: {sorted(allowed)}")


def _require(section: Mapping, key: str, where: str, kind=int) -> Any:
    if key not in section or section[key] is None:
        raise ConfigError(f"missing field '{where}.{key}'")
    value = section[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"field '{where}.{key}' must be a positive integer, got {value!r}")
    return value


def _num_classes(cfg: Mapping, num_classes, class_splits) -> tuple[int, list | None]:
    ds = cfg.get("dataset_configs") or {}
    splits = class_splits if class_splits is not None else ds.get("class_splits")
    if splits is not None:
        splits = [int(s) for s in splits]
        total = sum(splits)
        if num_classes is not None and int(num_classes) != total:
            raise ConfigError(f"num_classes={num_classes} but class_splits {splits} sum to {total}")
        return total, splits
    for value in (num_classes, ds.get("num_classes"), (cfg.get("dataset_meta_data") or {}).get("num_classes")):
        if value is not None:
            return int(value), None
    raise ConfigError("the number of classes is unknown: pass num_classes=..., or set "
                      "dataset_configs.num_classes (or dataset_configs.class_splits) in the config")


def spec_from_config(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                     input_shape=None) -> dict:
    """Validates a Scenic MTV experiment config and returns our model spec."""
    cfg = read_config(config)
    if "config" in cfg and "model" not in cfg:
        # A fixture-style JSON: {"config": {...}, "dataset_meta_data": {...}, "input_shape": [...]}.
        outer = cfg
        cfg = dict(cfg["config"])
        cfg.setdefault("dataset_meta_data", outer.get("dataset_meta_data") or {})
        if input_shape is None and outer.get("input_shape"):
            input_shape = outer["input_shape"][1:]
    model = cfg.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("config has no 'model' section (expected a Scenic MTV experiment config)")
    check_fields(model, MODEL_FIELDS, "model")
    ds = cfg.get("dataset_configs") or {}

    views = []
    raw_views = model.get("view_configs")
    if not raw_views:
        raise ConfigError("missing field 'model.view_configs' (a list of per-view configs)")
    for i, v in enumerate(raw_views):
        where = f"model.view_configs[{i}]"
        check_fields(v, VIEW_FIELDS, where)
        patches = v.get("patches") or {}
        size = patches.get("size")
        if size is None or len(size) != 3 or any(int(s) <= 0 for s in size):
            raise ConfigError(f"field '{where}.patches.size' must be (height, width, time), got {size!r}")
        view = {k: _require(v, k, where) for k in ("hidden_size", "num_heads", "mlp_dim", "num_layers")}
        if view["hidden_size"] % view["num_heads"]:
            raise ConfigError(f"'{where}.hidden_size' {view['hidden_size']} is not divisible by "
                              f"num_heads {view['num_heads']}")
        view["patch_size"] = [int(s) for s in size]
        views.append(view)

    fusion = model.get("cross_view_fusion")
    if fusion is not None:
        check_fields(fusion, FUSION_FIELDS, "model.cross_view_fusion")
        ftype = fusion.get("type")
        if ftype not in FUSION_TYPES:
            raise ConfigError(f"field 'model.cross_view_fusion.type' is {ftype!r}; expected one of {FUSION_TYPES}")
        layers = [int(f) for f in fusion.get("fusion_layers") or []]
        max_layers = max(v["num_layers"] for v in views)
        bad = [f for f in layers if not 0 <= f < max_layers]
        if bad:
            raise ConfigError(f"'model.cross_view_fusion.fusion_layers' {bad} outside 0..{max_layers - 1}")
        fusion = {"type": ftype, "fusion_layers": layers,
                  "fuse_in_descending_order": bool(fusion.get("fuse_in_descending_order", True)),
                  "use_query_config": bool(fusion.get("use_query_config", True))}
        if ftype == "bottleneck":
            fusion["bottleneck_tokens"] = _require(model["cross_view_fusion"], "bottleneck_tokens",
                                                   "model.cross_view_fusion")

    genc = model.get("global_encoder_config")
    if not genc:
        raise ConfigError("missing field 'model.global_encoder_config'")
    check_fields(genc, GLOBAL_FIELDS, "model.global_encoder_config")
    merge_axis = genc.get("merge_axis", "channel")
    if merge_axis not in ("channel", "time"):
        raise ConfigError(f"field 'model.global_encoder_config.merge_axis' is {merge_axis!r}; "
                          "expected 'channel' or 'time'")
    global_encoder = {k: _require(genc, k, "model.global_encoder_config")
                      for k in ("num_heads", "mlp_dim", "num_layers")}
    global_encoder["merge_axis"] = merge_axis
    global_encoder["hidden_size"] = int(genc.get("hidden_size") or 0) or None
    if merge_axis == "time" and not global_encoder["hidden_size"]:
        raise ConfigError("merge_axis 'time' needs 'model.global_encoder_config.hidden_size'")

    temporal = model.get("temporal_encoding_config") or {}
    check_fields(temporal, TEMPORAL_FIELDS, "model.temporal_encoding_config")
    if temporal.get("method", "3d_conv") != "3d_conv":
        raise ConfigError(f"'model.temporal_encoding_config.method' is {temporal.get('method')!r}; MTV "
                          "supports only '3d_conv' (its 3-element patch sizes rule out 'temporal_sampling')")

    classifier = model.get("classifier", "token")
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"field 'model.classifier' is {classifier!r}; expected one of {CLASSIFIERS}")
    keep_st = bool(model.get("keep_spatiotemporal_features", False))
    if keep_st and classifier == "token":
        raise ConfigError("classifier 'token' cannot be used with keep_spatiotemporal_features=True")
    if keep_st and len({tuple(v["patch_size"][:2]) for v in views}) > 1:
        raise ConfigError("keep_spatiotemporal_features=True needs the same patch height and width in "
                          f"every view, got {[v['patch_size'][:2] for v in views]}")
    final_endpoint = model.get("final_endpoint", "logits")
    if final_endpoint not in ("logits", "pre_logits"):
        raise ConfigError(f"field 'model.final_endpoint' is {final_endpoint!r}; expected 'logits' or 'pre_logits'")

    if input_shape is not None:
        frames, height, width = (int(s) for s in input_shape[:3])
        channels = int(input_shape[3]) if len(input_shape) > 3 else 3
    else:
        frames = ds.get("num_frames")
        if frames is None:
            raise ConfigError("missing field 'dataset_configs.num_frames'")
        crop = ds.get("crop_size", 224)
        height, width = (crop, crop) if isinstance(crop, int) else tuple(crop)
        channels = 3
    total, splits = _num_classes(cfg, num_classes, class_splits)
    names = split_names if split_names is not None else ds.get("split_names")
    if splits is not None:
        names = list(names) if names else [f"head{i}" for i in range(len(splits))]
        if len(names) != len(splits):
            raise ConfigError(f"split_names {names} and class_splits {splits} differ in length")
    else:
        names = None
    spec = {
        "num_frames": int(frames), "image_size": [int(height), int(width)], "channels": int(channels),
        "views": views, "cross_view_fusion": fusion, "global_encoder": global_encoder,
        "classifier": classifier, "num_classes": total, "class_splits": splits, "split_names": names,
        "dropout_rate": float(model.get("dropout_rate", 0.0) or 0.0),
        # Scenic's MTVClassificationModel defaults attention dropout to 0.1 when the config omits it.
        "attention_dropout_rate": float(model.get("attention_dropout_rate", 0.1)),
        "stochastic_depth": float(model.get("stochastic_depth", 0.0) or 0.0),
        "keep_spatiotemporal_features": keep_st, "final_endpoint": final_endpoint,
    }
    derive(spec)
    return spec


def derive(spec: dict) -> dict:
    """Checks that the input shape fits every view and returns the derived token geometry."""
    frames = spec["num_frames"]
    height, width = spec["image_size"]
    temporal = []
    for i, v in enumerate(spec["views"]):
        ph, pw, pt = v["patch_size"]
        for size, patch, what in ((frames, pt, "frames"), (height, ph, "height"), (width, pw, "width")):
            if size % patch:
                raise ConfigError(
                    f"view {i}: tubelet {what} {patch} does not divide the input {what} {size} "
                    f"(patches.size is (h, w, t) = {tuple(v['patch_size'])}); choose num_frames/crop_size "
                    "that are multiples of every view's tubelet")
        temporal.append(frames // pt)
    t_min, t_max = min(temporal), max(temporal)
    for i, t in enumerate(temporal):
        if t % t_min:
            raise ConfigError(f"view {i} has {t} temporal tokens, not a multiple of the coarsest view's "
                              f"{t_min}; Scenic aligns views by whole frames")
    cls = 1 if spec["classifier"] == "token" else 0
    geometry = []
    for v, t in zip(spec["views"], temporal, strict=True):
        ph, pw, _ = v["patch_size"]
        grid = (height // ph, width // pw)
        geometry.append({"temporal_tokens": t, "grid": grid, "tokens_per_frame": grid[0] * grid[1] + cls,
                         "frames_per_step": t // t_min})
    return {"temporal": temporal, "aligned_time": t_min, "max_time": t_max, "views": geometry}
