"""`mtv.predict`: label a video file or a directory of frames with a model, averaging test views.

The views are the evaluation pipeline's (`mtv.data.preprocessor`): frames are resized as they are decoded,
by the same op that evaluation applies to a decoded clip, so a long high-resolution video never sits in
memory at full size and the model sees exactly the pixels `mtv evaluate` would give it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mtv.eval.evaluate import parse_views  # noqa: F401  (part of this module's API)
from mtv.utils import numeric

DEFAULT_MODEL = "camera-motion"
RULES = numeric.VIEW_RULES


def average_views(logits: np.ndarray, rule: str = "logits_mean") -> np.ndarray:
    """Per-view logits [V, C] -> class probabilities [C] by a named rule (Scenic: 'logits_mean')."""
    return numeric.to_probabilities(*numeric.average_views(logits, rule, axis=0))


def eval_views(video: str | os.PathLike, model, views: str | None = None) -> tuple[np.ndarray, Any, int]:
    """Evaluation views of a video file or frames directory: (float32 views, DataConfig, frames decoded)."""
    from mtv.data.config import data_config
    from mtv.data.preprocessor import VideoPreprocessor
    from mtv.data.transforms import video_to_eval_views
    from mtv.data.video import load_video
    from mtv.eval.evaluate import eval_dataset_configs

    clips, crops = parse_views(views) if views else (None, None)
    config = data_config(eval_dataset_configs(model=model, clips=clips, crops=crops))
    pre = VideoPreprocessor(config.crop_size, config.min_resize, config.num_spatial_crops, config.zero_centering)
    clip = load_video(video, frame_transform=pre.resize)
    inputs = video_to_eval_views(clip, num_frames=config.num_frames, stride=config.stride,
                                 num_clips=config.num_test_clips, crop_size=config.crop_size,
                                 min_resize=config.min_resize, three_crops=config.do_three_spatial_crops,
                                 zero_centering=config.zero_centering)
    return inputs, config, clip.num_frames


def predict(video: str | os.PathLike, *, model: Any = None, views: str | None = None, top: int = 5,
            rule: str = "logits_mean", batch_size: int = 4) -> dict:
    """Top-k labels of a video: {'video', 'model', 'views', 'rule', 'heads': {head: [{label, index, probability}]}}."""
    from mtv.io.loading import load

    numeric.view_score_kind(rule)  # an unknown rule fails before any decoding
    handle = model if model is not None else DEFAULT_MODEL
    if isinstance(handle, (str, os.PathLike)):
        model = load(handle)
    inputs, config, num_decoded = eval_views(video, model, views)
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
        order, _ = numeric.top_k(probs, top)
        heads[head] = [{"index": int(i), "label": head_names[i] if head_names else str(int(i)),
                        "probability": float(probs[i])} for i in order]
    return {"video": os.fspath(video), "model": os.fspath(handle) if isinstance(handle, (str, os.PathLike))
            else type(model).__name__, "views": f"{config.num_test_clips}x{config.num_spatial_crops}",
            "rule": rule, "num_frames_decoded": num_decoded, "heads": heads}
