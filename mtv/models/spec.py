"""Scenic experiment config -> the plain, validated model spec our Keras models are built from.

A spec is a JSON-able dict. It keeps Scenic's field names for the model and records the input
shapes, because MTV's CLS tokens and positional tables depend on them. There is one format for
MTV and M&M; a plain MTV config (no `model.modalities`) gives an RGB-only spec:

  "modalities": {"rgb": {"num_frames", "image_size", "channels"},
                 "flow": {"num_frames", "image_size", "channels"},
                 "audio": {"num_frames", "mel_bins", "channels"}}   (only those configured)
  "views": [{"modality", "hidden_size", "num_heads", "mlp_dim", "num_layers", "patch_size"}, ...]
  "cross_view_fusion", "global_encoder", "classifier", "dropout_rate", "attention_dropout_rate",
  "stochastic_depth", "keep_spatiotemporal_features"                 (the backbone)
  "num_classes", "class_splits", "split_names", "final_endpoint"      (the head: HEAD_FIELDS)

`views` is one flat list, the streams in the fixed order rgb, flow, audio, each stream's views in
its own order (coarsest first, as MTV). Video patch sizes are Scenic's (h, w, t); audio patch
sizes are (time, frequency), the axes of the (B, time_frames, mel_bins, 1) input.
"""

from __future__ import annotations

import difflib
import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

from mtv import variants
from mtv.errors import ConfigError

MODALITIES = ("rgb", "flow", "audio")
DEFAULT_CHANNELS = {"rgb": 3, "flow": 2, "audio": 1}
HEAD_FIELDS = ("num_classes", "class_splits", "split_names", "final_endpoint")

MODEL_FIELDS = {
    "view_configs", "cross_view_fusion", "temporal_encoding_config", "global_encoder_config",
    "dropout_rate", "attention_dropout_rate", "stochastic_depth", "classifier",
    "keep_spatiotemporal_features", "final_endpoint", "data_dtype_str", "model_dtype_str", "modalities",
    # A localizer's head, targets and post-processing (mtv.long.localization): read there, not by the backbone,
    # so the same config also builds its backbone as a clip classifier (the sliding-window baseline).
    "localization",
}
VIEW_FIELDS = {"hidden_size", "num_heads", "mlp_dim", "num_layers", "patches"}
STREAM_FIELDS = {
    "rgb": {"variant", "view_configs", "channels"},
    "flow": {"variant", "view_configs", "channels"},
    "audio": {"variant", "view_configs", "channels", "mel_bins", "num_frames"},
}
FUSION_FIELDS = {"type", "fusion_layers", "fuse_in_descending_order", "use_query_config", "bottleneck_tokens"}
GLOBAL_FIELDS = {"num_heads", "mlp_dim", "num_layers", "hidden_size", "merge_axis"}
TEMPORAL_FIELDS = {"method", "kernel_init_method"}
# dataset_configs.audio follows mtv.data.audio.AudioConfig's names, plus the spectrogram length.
DATA_AUDIO_FIELDS = {"num_frames", "sample_rate", "window_ms", "hop_ms", "num_mel_bins", "fmin", "fmax",
                     "log_offset"}
DATA_FLOW_FIELDS = {"num_frames", "bound"}
CLASSIFIERS = ("token", "gap", "gmp", "gsp", "0")
FUSION_TYPES = ("cross_view_attention", "bottleneck")


# ------------------------------------------------------------------------------------- reading


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


def is_multimodal(config: Mapping) -> bool:
    """True when a (plain-dict) config has a `model.modalities` section (an M&M config)."""
    cfg = config.get("config", config) if "model" not in config else config
    return bool((cfg.get("model") or {}).get("modalities"))


def check_fields(section: Mapping, allowed: set, where: str) -> None:
    """Raises ConfigError for a field not in `allowed`, suggesting the closest known name."""
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown field '{where}.{key}'{hint}; known fields: {sorted(allowed)}")


def _positive(section: Mapping, key: str, where: str) -> int:
    value = section.get(key)
    if value is None:
        raise ConfigError(f"missing field '{where}.{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"field '{where}.{key}' must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------------------------- streams


def _audio_variant(variant: str, where: str) -> list[dict]:
    """'B/16x16' (ViT size / time x frequency patch) or 'B/16' (square patch), views joined by '+'."""
    views = []
    for part in str(variant).split("+"):
        size, _, patch = part.strip().partition("/")
        try:
            numbers = [int(p) for p in patch.split("x")]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2) or any(n <= 0 for n in numbers):
            raise ConfigError(f"'{where}' view '{part}' is malformed: expected 'SIZE/TxF' (time x frequency "
                              "patch, e.g. 'B/16x16') or 'SIZE/P' (square patch)")
        dims = variants.parse_view_configs(f"{size.strip()}/1")[0].to_dict()
        dims["patches"] = {"size": numbers * 2 if len(numbers) == 1 else numbers}
        views.append(dims)
    return views


def _stream_sections(model: Mapping) -> dict:
    """`model.modalities`, or {'rgb': {}} for a plain MTV config; validated names and order."""
    sections = model.get("modalities")
    if sections is None:
        if not model.get("view_configs"):
            raise ConfigError("missing field 'model.view_configs' (a list of per-view configs)")
        return {"rgb": {}}
    if not isinstance(sections, Mapping) or not sections:
        raise ConfigError(f"'model.modalities' must map modality names ({', '.join(MODALITIES)}) to their "
                          f"settings, got {sections!r}")
    unknown = [k for k in sections if k not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r} in 'model.modalities'; known modalities: "
                          f"{', '.join(MODALITIES)}")
    if "rgb" not in sections and model.get("view_configs"):
        raise ConfigError("'model.view_configs' describes the RGB stream, but 'rgb' is not in 'model.modalities'")
    return {m: sections[m] or {} for m in MODALITIES if m in sections}


def _stream_views(name: str, section: Mapping, model: Mapping) -> tuple[list[dict], str]:
    """The raw view configs of one stream and the config path they came from."""
    where = f"model.modalities.{name}"
    has_variant, has_views = section.get("variant") is not None, section.get("view_configs") is not None
    if has_variant and has_views:
        raise ConfigError(f"'{where}' sets both 'variant' and 'view_configs'; give one")
    if name == "rgb" and model.get("view_configs"):
        if has_variant or has_views:
            raise ConfigError(f"the RGB views are given twice: in 'model.view_configs' and in '{where}'; "
                              "keep one")
        return list(model["view_configs"]), "model.view_configs"
    if has_views:
        return list(section["view_configs"]), f"{where}.view_configs"
    if has_variant:
        if name == "audio":
            return _audio_variant(section["variant"], f"{where}.variant"), f"{where}.variant"
        return [v.to_dict() for v in variants.parse_view_configs(section["variant"])], f"{where}.variant"
    hint = " (or 'model.view_configs')" if name == "rgb" else ""
    raise ConfigError(f"'{where}' needs 'variant' (e.g. {'B/16x16' if name == 'audio' else 'B/4'}) or "
                      f"'view_configs'{hint}")


def _parse_views(name: str, raw: list, where: str) -> list[dict]:
    if not raw:
        raise ConfigError(f"'{where}' holds no views")
    patch_len = 2 if name == "audio" else 3
    order = "(time, frequency)" if name == "audio" else "(height, width, time)"
    views = []
    for i, v in enumerate(raw):
        v = v.to_dict() if hasattr(v, "to_dict") else dict(v)
        at = f"{where}[{i}]"
        check_fields(v, VIEW_FIELDS, at)
        view = {"modality": name}
        for key in ("hidden_size", "num_heads", "mlp_dim", "num_layers"):
            view[key] = _positive(v, key, at)
        if view["hidden_size"] % view["num_heads"]:
            raise ConfigError(f"'{at}.hidden_size' {view['hidden_size']} is not divisible by num_heads "
                              f"{view['num_heads']}")
        size = (v.get("patches") or {}).get("size")
        if size is None or len(size) != patch_len or any(int(s) <= 0 for s in size):
            raise ConfigError(f"field '{at}.patches.size' must be {order} for the {name} stream, got {size!r}")
        view["patch_size"] = [int(s) for s in size]
        views.append(view)
    return views


def _agree(values: dict, where: str) -> int:
    """The one value several config fields give for the same size; they must not disagree."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        raise ConfigError(f"missing field: {where} (set one of {sorted(values)})")
    if len(set(given.values())) > 1:
        raise ConfigError(f"config fields disagree on {where}: {given}")
    key, value = next(iter(given.items()))
    return _positive_value(value, key)


def _positive_value(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"field '{where}' must be a positive integer, got {value!r}")
    return value


def _stream_input(name: str, section: Mapping, ds: Mapping, override) -> dict:
    """Input size of one stream: from `override`, or the model section and dataset_configs."""
    channels = _positive_value(section.get("channels", DEFAULT_CHANNELS[name]), f"model.modalities.{name}.channels")
    if name == "audio":
        if override is not None:
            frames, mel = (int(s) for s in override[:2])
            channels = int(override[2]) if len(override) > 2 else channels
        else:
            data = ds.get("audio") or {}
            frames = _agree({"model.modalities.audio.num_frames": section.get("num_frames"),
                             "dataset_configs.audio.num_frames": data.get("num_frames")}, "the audio frames")
            mel = _agree({"model.modalities.audio.mel_bins": section.get("mel_bins"),
                          "dataset_configs.audio.num_mel_bins": data.get("num_mel_bins")}, "the audio mel bins")
        return {"num_frames": frames, "mel_bins": mel, "channels": channels}
    if override is not None:
        frames, height, width = (int(s) for s in override[:3])
        channels = int(override[3]) if len(override) > 3 else channels
    else:
        frames = ds.get("num_frames")
        if name == "flow" and (ds.get("flow") or {}).get("num_frames") is not None:
            frames = ds["flow"]["num_frames"]
        if frames is None:
            raise ConfigError(f"missing field 'dataset_configs.num_frames' (the {name} stream's frames)")
        crop = ds.get("crop_size", 224)
        height, width = (crop, crop) if isinstance(crop, int) else tuple(crop)
    return {"num_frames": int(frames), "image_size": [int(height), int(width)], "channels": int(channels)}


# ------------------------------------------------------------------------------ shared sections


def _fusion(model: Mapping, views: list[dict]) -> dict | None:
    fusion = model.get("cross_view_fusion")
    if fusion is None:
        return None
    check_fields(fusion, FUSION_FIELDS, "model.cross_view_fusion")
    ftype = fusion.get("type")
    if ftype not in FUSION_TYPES:
        raise ConfigError(f"field 'model.cross_view_fusion.type' is {ftype!r}; expected one of {FUSION_TYPES}")
    layers = [int(f) for f in fusion.get("fusion_layers") or []]
    max_layers = max(v["num_layers"] for v in views)
    bad = [f for f in layers if not 0 <= f < max_layers]
    if bad:
        raise ConfigError(f"'model.cross_view_fusion.fusion_layers' {bad} outside 0..{max_layers - 1}")
    out = {"type": ftype, "fusion_layers": layers,
           "fuse_in_descending_order": bool(fusion.get("fuse_in_descending_order", True)),
           "use_query_config": bool(fusion.get("use_query_config", True))}
    if ftype == "bottleneck":
        out["bottleneck_tokens"] = _positive(fusion, "bottleneck_tokens", "model.cross_view_fusion")
    return out


def _global_encoder(model: Mapping) -> dict:
    genc = model.get("global_encoder_config")
    if not genc:
        raise ConfigError("missing field 'model.global_encoder_config'")
    check_fields(genc, GLOBAL_FIELDS, "model.global_encoder_config")
    merge_axis = genc.get("merge_axis", "channel")
    if merge_axis not in ("channel", "time"):
        raise ConfigError(f"field 'model.global_encoder_config.merge_axis' is {merge_axis!r}; "
                          "expected 'channel' or 'time'")
    out = {k: _positive(genc, k, "model.global_encoder_config") for k in ("num_heads", "mlp_dim", "num_layers")}
    out["merge_axis"] = merge_axis
    out["hidden_size"] = int(genc.get("hidden_size") or 0) or None
    if merge_axis == "time" and not out["hidden_size"]:
        raise ConfigError("merge_axis 'time' needs 'model.global_encoder_config.hidden_size'")
    return out


def _num_classes(cfg: Mapping, num_classes, class_splits) -> tuple[int, list | None]:
    ds = cfg.get("dataset_configs") or {}
    splits = class_splits if class_splits is not None else ds.get("class_splits")
    if splits is not None:
        splits = [int(s) for s in splits]
        total = sum(splits)
        if num_classes is not None and int(num_classes) != total:
            raise ConfigError(f"num_classes={num_classes} but class_splits {splits} sum to {total}")
        return total, splits
    sources = (("num_classes", num_classes), ("dataset_configs.num_classes", ds.get("num_classes")),
               ("dataset_meta_data.num_classes", (cfg.get("dataset_meta_data") or {}).get("num_classes")))
    for where, value in sources:
        if value is not None:
            return check_num_classes(value, where), None
    raise ConfigError("the number of classes is unknown: pass num_classes=..., or set "
                      "dataset_configs.num_classes (or dataset_configs.class_splits) in the config")


def check_num_classes(value: Any, where: str = "num_classes") -> int:
    """`value` as a class count: a positive integer (a ConfigError naming `where` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer (the number of classes of the head), got {value!r}")
    return int(value)


def head_fields(num_classes: int, class_splits=None, split_names=None, final_endpoint: str = "logits") -> dict:
    """The validated head part of a spec: one Dense of `num_classes`, sliced by `class_splits`."""
    num_classes = check_num_classes(num_classes)
    if final_endpoint not in ("logits", "pre_logits"):
        raise ConfigError(f"field 'model.final_endpoint' is {final_endpoint!r}; expected 'logits' or 'pre_logits'")
    splits = [int(s) for s in class_splits] if class_splits else None
    names = None
    if splits is not None:
        if sum(splits) != int(num_classes):
            raise ConfigError(f"num_classes={num_classes} but class_splits {splits} sum to {sum(splits)}")
        names = list(split_names) if split_names else [f"head{i}" for i in range(len(splits))]
        if len(names) != len(splits):
            raise ConfigError(f"split_names {names} and class_splits {splits} differ in length")
    return {"num_classes": int(num_classes), "class_splits": splits, "split_names": names,
            "final_endpoint": final_endpoint}


# ---------------------------------------------------------------------------------------- spec


def spec_from_config(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                     input_shape=None, input_shapes: Mapping | None = None) -> dict:
    """Validates a Scenic MTV (or M&M: `model.modalities`) experiment config and returns our model spec.

    `input_shape` overrides the RGB input (T, H, W[, C]); `input_shapes` any stream's:
    {'rgb': (T, H, W[, C]), 'flow': (T, H, W[, C]), 'audio': (Ta, M[, C])}.
    """
    cfg = read_config(config)
    input_shapes = dict(input_shapes or {})
    if input_shape is not None:
        input_shapes.setdefault("rgb", tuple(input_shape))
    if "config" in cfg and "model" not in cfg:
        # A fixture-style JSON: {"config": {...}, "dataset_meta_data": {...}, "input_shape": [B, T, H, W, C]};
        # its input shape is the RGB stream's.
        outer = cfg
        cfg = dict(cfg["config"])
        cfg.setdefault("dataset_meta_data", outer.get("dataset_meta_data") or {})
        if outer.get("input_shape") and "rgb" not in input_shapes:
            input_shapes["rgb"] = outer["input_shape"][1:]
    model = cfg.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("config has no 'model' section (expected a Scenic MTV experiment config)")
    check_fields(model, MODEL_FIELDS, "model")
    ds = cfg.get("dataset_configs") or {}
    if ds.get("audio") is not None:
        check_fields(ds["audio"], DATA_AUDIO_FIELDS, "dataset_configs.audio")
    if ds.get("flow") is not None:
        check_fields(ds["flow"], DATA_FLOW_FIELDS, "dataset_configs.flow")
    sections = _stream_sections(model)
    bad = [k for k in input_shapes if k not in sections]
    if bad:
        raise ConfigError(f"input_shapes names {bad[0]!r}, which is not a configured modality "
                          f"({', '.join(sections)})")

    streams, views = {}, []
    for name, section in sections.items():
        check_fields(section, STREAM_FIELDS[name], f"model.modalities.{name}")
        raw, where = _stream_views(name, section, model)
        views.extend(_parse_views(name, raw, where))
        streams[name] = _stream_input(name, section, ds, input_shapes.get(name))

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
    fusion, global_encoder = _fusion(model, views), _global_encoder(model)
    total, splits = _num_classes(cfg, num_classes, class_splits)
    names = split_names if split_names is not None else ds.get("split_names")
    spec = {
        "modalities": streams, "views": views, "cross_view_fusion": fusion, "global_encoder": global_encoder,
        "classifier": classifier,
        "dropout_rate": float(model.get("dropout_rate", 0.0) or 0.0),
        # Scenic's MTVClassificationModel defaults attention dropout to 0.1 when the config omits it.
        "attention_dropout_rate": float(model.get("attention_dropout_rate", 0.1)),
        "stochastic_depth": float(model.get("stochastic_depth", 0.0) or 0.0),
        "keep_spatiotemporal_features": keep_st,
        **head_fields(total, splits, names if splits is not None else None, model.get("final_endpoint", "logits")),
    }
    derive(spec)
    return spec


def derive(spec: Mapping) -> dict:
    """Checks that every stream's input fits its views and returns the token geometry.

    Audio: a spectrogram "frame" is one column of time patches; its tokens are the frequency patches.
    All views of all streams share one aligned time axis T = min temporal tokens (see docs/multimodal.md).
    """
    streams = spec.get("modalities")
    if not isinstance(streams, Mapping) or not streams:
        raise ConfigError("the spec has no 'modalities' (it was written by an older mtv; rebuild it with "
                          "mtv.models.spec.spec_from_config)")
    unknown = [m for m in streams if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r} in the spec; known modalities: {', '.join(MODALITIES)}")
    cls = 1 if spec["classifier"] == "token" else 0
    temporal, geometry = [], []
    for i, v in enumerate(spec["views"]):
        name = v.get("modality")
        if name not in streams:
            raise ConfigError(f"view {i} belongs to modality {name!r}, which the spec does not configure "
                              f"({', '.join(streams)})")
        s = streams[name]
        if name == "audio":
            pt, pf = v["patch_size"]
            checks = ((s["num_frames"], pt, "time frames"), (s["mel_bins"], pf, "mel bins"))
            grid = (1, s["mel_bins"] // pf)
            kind, order = "patch", "(t, f)"
        else:
            ph, pw, pt = v["patch_size"]
            checks = ((s["num_frames"], pt, "frames"), (s["image_size"][0], ph, "height"),
                      (s["image_size"][1], pw, "width"))
            grid = (s["image_size"][0] // ph, s["image_size"][1] // pw)
            kind, order = "tubelet", "(h, w, t)"
        for size, patch, what in checks:
            if size % patch:
                raise ConfigError(f"view {i} ({name}): {kind} {what} {patch} does not divide the {name} input's "
                                  f"{what} {size} (patches.size is {order} = {tuple(v['patch_size'])}); choose "
                                  f"input sizes that are multiples of every view's {kind}")
        temporal.append(s["num_frames"] // pt)
        geometry.append({"temporal_tokens": temporal[-1], "grid": grid, "tokens_per_frame": grid[0] * grid[1] + cls})
    t_min, t_max = min(temporal), max(temporal)
    merge_channel = spec["global_encoder"]["merge_axis"] == "channel"
    for i, (t, g) in enumerate(zip(temporal, geometry, strict=True)):
        if t % t_min:
            raise ConfigError(f"view {i} ({spec['views'][i]['modality']}) has {t} temporal tokens, not a multiple "
                              f"of the aligned time {t_min} (the fewest temporal tokens of any view); views are "
                              "aligned by whole steps, as Scenic")
        if merge_channel and t_max % t:
            raise ConfigError(f"view {i} ({spec['views'][i]['modality']}) has {t} temporal tokens, which does not "
                              f"divide the longest view's {t_max}; merge_axis 'channel' tiles every view to it")
        g["frames_per_step"] = t // t_min
    width = (spec["global_encoder"]["hidden_size"] if not merge_channel
             else sum(v["hidden_size"] for v in spec["views"]))
    if width % spec["global_encoder"]["num_heads"]:
        raise ConfigError(f"the global encoder's width {width} (the sum of all view widths with merge_axis "
                          f"'channel') is not divisible by model.global_encoder_config.num_heads "
                          f"{spec['global_encoder']['num_heads']}")
    if spec.get("keep_spatiotemporal_features"):
        if "audio" in streams or len({g["grid"] for g in geometry}) > 1:
            raise ConfigError("keep_spatiotemporal_features=True needs the same token grid (patch height and "
                              f"width) in every view, and no audio stream; got grids {[g['grid'] for g in geometry]}")
    return {"temporal": temporal, "aligned_time": t_min, "max_time": t_max, "views": geometry}


def stream_views(spec: Mapping) -> dict[str, list[int]]:
    """Modality -> indices of its views in the flat view list (and in the Flax names `..._view{i}`)."""
    out: dict[str, list[int]] = {m: [] for m in MODALITIES if m in spec["modalities"]}
    for i, v in enumerate(spec["views"]):
        out[v["modality"]].append(i)
    return out
