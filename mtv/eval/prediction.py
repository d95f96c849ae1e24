"""`mtv.predict`: label a video file or a directory of frames with a model, averaging test views.

The views are the evaluation pipeline's (`mtv.data.preprocessor`): frames are resized as they are decoded,
by the same op that evaluation applies to a decoded clip, so a long high-resolution video never sits in
memory at full size and the model sees exactly the pixels `mtv evaluate` would give it.

A multimodal (M&M) model also gets the video's optical flow and audio track, built for the same clips as
the record reader builds them (`mtv.eval.multimodal_inputs`). A video without a stream the model needs is a
`DataError` naming the file and the stream, unless `missing_modality='zeros'` (then the result's `notes` say
which stream was fed `mtv.models.missing`'s stand-in). TensorFlow is imported only inside the functions that
decode and preprocess, so importing this module needs none.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass
class EvalInputs:
    """A video's evaluation inputs for a model: [views, ...] (a dict by input name for a multimodal model)."""

    inputs: Any
    config: Any  # mtv.data.config.DataConfig
    num_frames_decoded: int
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_views(self) -> int:
        """Views per input (clips x crops)."""
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs
        return len(first)

    def batch(self, start: int, size: int):
        """Views [start, start + size) of every input."""
        if isinstance(self.inputs, dict):
            return {name: value[start:start + size] for name, value in self.inputs.items()}
        return self.inputs[start:start + size]


def is_multimodal(model) -> bool:
    """True when the model takes more (or other) inputs than one RGB video."""
    return list(model.input_shapes) != ["rgb"]


def eval_inputs(video: str | os.PathLike, model, views: str | None = None, *,
                missing_modality: str = "error") -> EvalInputs:
    """Evaluation views of a video file or frames directory for `model`, every input it takes."""
    from mtv.data.config import data_config
    from mtv.data.preprocessor import VideoPreprocessor
    from mtv.data.transforms import video_to_eval_views
    from mtv.data.video import load_video
    from mtv.eval.evaluate import eval_dataset_configs

    multimodal = is_multimodal(model)
    if multimodal:
        from mtv.eval.multimodal_inputs import check_missing_mode

        check_missing_mode(missing_modality)  # a bad value fails before any decoding
    clips, crops = parse_views(views) if views else (None, None)
    config = data_config(eval_dataset_configs(model=model, clips=clips, crops=crops))
    pre = VideoPreprocessor(config.crop_size, config.min_resize, config.num_spatial_crops, config.zero_centering)
    audio_rate = None
    if "audio" in model.input_shapes:
        from mtv.eval.multimodal_inputs import audio_settings

        audio_rate = audio_settings(model)[0].sample_rate  # decoded at the model's rate, as prepare decodes it
    clip = load_video(video, frame_transform=pre.resize, with_audio=audio_rate is not None,
                      audio_sample_rate=audio_rate)
    if not multimodal:
        inputs = video_to_eval_views(clip, num_frames=config.num_frames, stride=config.stride,
                                     num_clips=config.num_test_clips, crop_size=config.crop_size,
                                     min_resize=config.min_resize, three_crops=config.do_three_spatial_crops,
                                     zero_centering=config.zero_centering)
        return EvalInputs(inputs, config, clip.num_frames)
    from mtv.eval.multimodal_inputs import multimodal_views

    inputs, notes = multimodal_views(clip, model, config, missing_modality=missing_modality)
    return EvalInputs(inputs, config, clip.num_frames, notes)


def eval_views(video: str | os.PathLike, model, views: str | None = None) -> tuple[Any, Any, int]:
    """Evaluation views of a video file or frames directory: (float32 views, DataConfig, frames decoded)."""
    got = eval_inputs(video, model, views)
    return got.inputs, got.config, got.num_frames_decoded


def predict(video: str | os.PathLike, *, model: Any = None, views: str | None = None, top: int = 5,
            rule: str = "logits_mean", batch_size: int = 4, missing_modality: str = "error") -> dict:
    """Top-k labels of a video: {'video', 'model', 'views', 'rule', 'heads': {head: [{label, index, probability}]}}.

    A multimodal model gets the video's flow and audio too; `missing_modality` ('error' or 'zeros') says what
    happens when the video lacks a stream the model needs, and `notes` in the result say what was done.
    """
    from mtv.io.loading import load

    numeric.view_score_kind(rule)  # an unknown rule fails before any decoding
    handle = model if model is not None else DEFAULT_MODEL
    if isinstance(handle, (str, os.PathLike)):
        model = load(handle)
    got = eval_inputs(video, model, views, missing_modality=missing_modality)
    outputs: dict[str, list] = {}
    for start in range(0, got.num_views, batch_size):
        out = model(got.batch(start, batch_size), training=False)
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
    config = got.config
    return {"video": os.fspath(video), "model": os.fspath(handle) if isinstance(handle, (str, os.PathLike))
            else type(model).__name__, "views": f"{config.num_test_clips}x{config.num_spatial_crops}",
            "rule": rule, "num_frames_decoded": got.num_frames_decoded, "inputs": list(model.input_shapes),
            "notes": got.notes, "heads": heads}
