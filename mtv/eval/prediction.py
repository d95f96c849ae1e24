"""`mtv.predict`: label a video file or a directory of frames with a model, averaging test views."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mtv.errors import DataError

DEFAULT_MODEL = "camera-motion"
RULES = ("logits_mean", "softmax_mean")


def parse_views(views: str | tuple[int, int]) -> tuple[int, int]:
    """'4x3' -> (4 clips, 3 crops); crops must be 1 or 3."""
    if isinstance(views, tuple):
        clips, crops = views
    else:
        parts = str(views).lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"views must look like CLIPSxCROPS, e.g. '4x3', got {views!r}")
        clips, crops = (int(p) for p in parts)
    if clips < 1 or crops not in (1, 3):
        raise DataError(f"views {views!r}: need at least 1 clip and 1 or 3 spatial crops")
    return clips, crops


def average_views(logits: np.ndarray, rule: str = "logits_mean") -> np.ndarray:
    """Per-view logits [V, C] -> class probabilities [C] by a named rule (Scenic: 'logits_mean')."""
    if rule not in RULES:
        raise DataError(f"unknown view-averaging rule {rule!r}; expected one of {RULES}")
    logits = np.asarray(logits, np.float64)
    if rule == "logits_mean":
        return _softmax(logits.mean(axis=0))
    return _softmax(logits).mean(axis=0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _settings(model, views: str | None) -> dict:
    meta = getattr(model, "metadata", None) or {}
    pre = dict(meta.get("preprocessing") or {})
    frames, height, _, _ = model.input_frames_shape
    stride = int(meta.get("stride") or pre.get("stride") or 1)
    default_views = meta.get("test_views") or pre.get("test_views") or "1x1"
    clips, crops = parse_views(views or default_views)
    return {"num_frames": frames, "stride": stride, "num_clips": clips, "crop_size": height,
            "min_resize": int(pre.get("min_resize") or height), "three_crops": crops == 3,
            "zero_centering": bool(pre.get("zero_centering", True))}


def predict(video: str | os.PathLike, *, model: Any = None, views: str | None = None, top: int = 5,
            rule: str = "logits_mean", batch_size: int = 4) -> dict:
    """Top-k labels of a video: {'video', 'model', 'views', 'rule', 'heads': {head: [{label, index, probability}]}}."""
    from mtv.data.transforms import video_to_eval_views
    from mtv.data.video import load_video
    from mtv.io.loading import load

    handle = model if model is not None else DEFAULT_MODEL
    if isinstance(handle, (str, os.PathLike)):
        model = load(handle)
    settings = _settings(model, views)
    # Frames are resized exactly as the evaluation pipeline does (bilinear, in TF); only frames over twice
    # that size are shrunk while decoding, to bound memory on long high-resolution videos.
    clip = load_video(video, min_resize=2 * settings["min_resize"])
    inputs = video_to_eval_views(clip, **settings)
    outputs: dict[str, list] = {}
    for start in range(0, len(inputs), batch_size):
        out = model(inputs[start:start + batch_size], training=False)
        out = out if isinstance(out, dict) else {"logits": out}
        for head, value in out.items():
            outputs.setdefault(head, []).append(np.asarray(value))
    meta = getattr(model, "metadata", None) or {}
    names = meta.get("class_names")
    heads = {}
    for head, chunks in outputs.items():
        probs = average_views(np.concatenate(chunks), rule)
        head_names = names.get(head) if isinstance(names, dict) else names
        order = np.argsort(-probs)[:top]
        heads[head] = [{"index": int(i), "label": head_names[i] if head_names else str(int(i)),
                        "probability": float(probs[i])} for i in order]
    return {"video": os.fspath(video), "model": os.fspath(handle) if isinstance(handle, (str, os.PathLike))
            else type(model).__name__, "views": f"{settings['num_clips']}x{3 if settings['three_crops'] else 1}",
            "rule": rule, "num_frames_decoded": int(clip.frames.shape[0]), "heads": heads}
