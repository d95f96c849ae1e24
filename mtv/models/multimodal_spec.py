"""Scenic-style config -> the validated spec of a multimodal MTV (M&M), and its token geometry.

A multimodal spec is MTV's spec (see `mtv.models.spec`) with the input described per modality:

  "modalities": {"rgb": {"num_frames", "image_size", "channels"},
                 "flow": {"num_frames", "image_size", "channels"},
                 "audio": {"num_frames", "mel_bins", "channels"}}   (only those configured)
  "views": [{"modality", "hidden_size", "num_heads", "mlp_dim", "num_layers", "patch_size"}, ...]

`views` is one flat list, the streams in the fixed order rgb, flow, audio, each stream's views in
its own order (coarsest first, as MTV). Video patch sizes are Scenic's (h, w, t); audio patch
sizes are (time, frequency), the axes of the (B, time_frames, mel_bins, 1) input.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from mtv import variants
from mtv.errors import ConfigError
from mtv.models.spec import check_fields, read_config, spec_from_config

MODALITIES = ("rgb", "flow", "audio")
VIDEO_MODALITIES = ("rgb", "flow")
DEFAULT_CHANNELS = {"rgb": 3, "flow": 2, "audio": 1}
STREAM_FIELDS = {
    "rgb": {"variant", "view_configs", "channels"},
    "flow": {"variant", "view_configs", "channels"},
    "audio": {"variant", "view_configs", "channels", "mel_bins", "num_frames"},
}
VIEW_FIELDS = {"hidden_size", "num_heads", "mlp_dim", "num_layers", "patches"}
# dataset_configs.audio follows mtv.data.audio.AudioConfig's names, plus the spectrogram length.
DATA_AUDIO_FIELDS = {"num_frames", "sample_rate", "window_ms", "hop_ms", "num_mel_bins", "fmin", "fmax",
                     "log_offset"}
DATA_FLOW_FIELDS = {"num_frames", "bound"}


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"field '{where}' must be a positive integer, got {value!r}")
    return value


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
            view[key] = _positive(v.get(key), f"{at}.{key}")
        if view["hidden_size"] % view["num_heads"]:
            raise ConfigError(f"'{at}.hidden_size' {view['hidden_size']} is not divisible by num_heads "
                              f"{view['num_heads']}")
        size = (v.get("patches") or {}).get("size")
        if size is None or len(size) != patch_len:
            raise ConfigError(f"field '{at}.patches.size' must be {order} for the {name} stream, got {size!r}")
        view["patch_size"] = [_positive(int(s), f"{at}.patches.size") for s in size]
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
    return _positive(value, key)


def _stream_input(name: str, section: Mapping, ds: Mapping, override) -> dict:
    """Input size of one stream: from `override`, or the model section and dataset_configs."""
    channels = _positive(section.get("channels", DEFAULT_CHANNELS[name]), f"model.modalities.{name}.channels")
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


def _check_dataset_sections(ds: Mapping) -> None:
    if ds.get("audio") is not None:
        check_fields(ds["audio"], DATA_AUDIO_FIELDS, "dataset_configs.audio")
    if ds.get("flow") is not None:
        check_fields(ds["flow"], DATA_FLOW_FIELDS, "dataset_configs.flow")


def multimodal_spec_from_config(config: Any, *, num_classes: int | None = None, class_splits=None,
                                split_names=None, input_shapes: Mapping | None = None) -> dict:
    """Validates a Scenic-style M&M config (an MTV config plus `model.modalities`) and returns the spec.

    Without `model.modalities` the config is a plain MTV config and the model is RGB only.
    `input_shapes` overrides the per-stream input sizes: {'rgb': (T, H, W[, C]), 'audio': (Ta, M[, C])}.
    """
    cfg = read_config(config)
    input_shapes = dict(input_shapes or {})
    if "config" in cfg and "model" not in cfg:
        # A fixture-style record {"config": ..., "dataset_meta_data": ..., "input_shape": [B, T, H, W, C]},
        # read as spec_from_config reads it; its input shape is the RGB stream's.
        outer = cfg
        cfg = dict(cfg["config"])
        cfg.setdefault("dataset_meta_data", outer.get("dataset_meta_data") or {})
        if outer.get("input_shape") and "rgb" not in input_shapes:
            input_shapes["rgb"] = outer["input_shape"][1:]
    model = cfg.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("config has no 'model' section (expected a Scenic MTV experiment config)")
    ds = cfg.get("dataset_configs") or {}
    _check_dataset_sections(ds)
    sections = model.get("modalities")
    if sections is None:
        sections = {"rgb": {}}
    if not isinstance(sections, Mapping) or not sections:
        raise ConfigError(f"'model.modalities' must map modality names ({', '.join(MODALITIES)}) to their "
                          f"settings, got {sections!r}")
    unknown = [k for k in sections if k not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r} in 'model.modalities'; known modalities: "
                          f"{', '.join(MODALITIES)}")
    if "rgb" not in sections and model.get("view_configs"):
        raise ConfigError("'model.view_configs' describes the RGB stream, but 'rgb' is not in 'model.modalities'")
    bad = [k for k in input_shapes if k not in sections]
    if bad:
        raise ConfigError(f"input_shapes names {bad[0]!r}, which is not a configured modality "
                          f"({', '.join(sections)})")
    names = [m for m in MODALITIES if m in sections]

    streams, views = {}, []
    for name in names:
        section = sections[name] or {}
        check_fields(section, STREAM_FIELDS[name], f"model.modalities.{name}")
        raw, where = _stream_views(name, section, model)
        views.extend(_parse_views(name, raw, where))
        streams[name] = _stream_input(name, section, ds, input_shapes.get(name))

    # Every field MTV shares is validated by MTV's own spec_from_config, on a stand-in input that
    # any view fits (patches of 1), so both models apply the same rules with the same messages.
    shared_model = {k: v for k, v in model.items() if k != "modalities"}
    shared_model["view_configs"] = [
        {**{k: v[k] for k in ("hidden_size", "num_heads", "mlp_dim", "num_layers")}, "patches": {"size": [1, 1, 1]}}
        for v in views]
    shared = spec_from_config({**cfg, "model": shared_model}, num_classes=num_classes, class_splits=class_splits,
                              split_names=split_names, input_shape=(1, 1, 1, 3))
    for key in ("views", "num_frames", "image_size", "channels"):
        shared.pop(key)
    spec = {"modalities": streams, "views": views, **shared}
    derive_multimodal(spec)
    return spec


def derive_multimodal(spec: dict) -> dict:
    """Checks that every stream's input fits its views and returns the token geometry (as MTV's `derive`).

    Audio: a spectrogram "frame" is one column of time patches; its tokens are the frequency patches.
    All views of all streams share one aligned time axis T = min temporal tokens (see docs/multimodal.md).
    """
    streams = spec.get("modalities") or {}
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
        else:
            ph, pw, pt = v["patch_size"]
            checks = ((s["num_frames"], pt, "frames"), (s["image_size"][0], ph, "height"),
                      (s["image_size"][1], pw, "width"))
            grid = (s["image_size"][0] // ph, s["image_size"][1] // pw)
        for size, patch, what in checks:
            if size % patch:
                raise ConfigError(f"view {i} ({name}): patch {what} {patch} does not divide the {name} input's "
                                  f"{what} {size} (patch size {tuple(v['patch_size'])})")
        temporal.append(s["num_frames"] // pt)
        geometry.append({"temporal_tokens": temporal[-1], "grid": grid, "tokens_per_frame": grid[0] * grid[1] + cls})
    t_min, t_max = min(temporal), max(temporal)
    merge_channel = spec["global_encoder"]["merge_axis"] == "channel"
    for i, (t, g) in enumerate(zip(temporal, geometry, strict=True)):
        if t % t_min:
            raise ConfigError(f"view {i} ({spec['views'][i]['modality']}) has {t} temporal tokens, not a multiple "
                              f"of the aligned time {t_min} (the fewest temporal tokens of any view); streams are "
                              "aligned by whole steps")
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
            raise ConfigError("keep_spatiotemporal_features=True needs the same token grid in every view "
                              f"(and no audio stream), got grids {[g['grid'] for g in geometry]}")
    return {"temporal": temporal, "aligned_time": t_min, "max_time": t_max, "views": geometry}


def stream_views(spec: Mapping) -> dict[str, list[int]]:
    """Modality -> indices of its views in the flat view list (and in the Flax names `..._view{i}`)."""
    out: dict[str, list[int]] = {m: [] for m in MODALITIES if m in spec["modalities"]}
    for i, v in enumerate(spec["views"]):
        out[v["modality"]].append(i)
    return out


def mtv_spec(spec: Mapping) -> dict:
    """The plain MTV spec of an RGB-only multimodal spec (for comparisons and exports)."""
    if list(spec["modalities"]) != ["rgb"]:
        raise ConfigError(f"only an RGB-only spec is a plain MTV spec; this one has {list(spec['modalities'])}")
    out = copy.deepcopy(dict(spec))
    rgb = out.pop("modalities")["rgb"]
    out.update(rgb)
    out["views"] = [{k: v for k, v in view.items() if k != "modality"} for view in out["views"]]
    return out
