"""`mtv.predict`: label a video file or a directory of frames with a model, averaging test views.

The views are the evaluation pipeline's (`mtv.data.preprocessor`): only the sampled clips' frames are decoded,
by seeking (`mtv.data.video.VideoSource`), and each is resized as it is decoded, by the same op that evaluation
applies to a decoded clip; so the cost depends on the views, not on the video's length, a long high-resolution
video never sits in memory, and the model sees exactly the pixels `mtv evaluate` would give it.

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
    num_frames_decoded: int  # distinct frames decoded and kept (the sampled ones), not the video's length
    notes: list[str] = dataclasses.field(default_factory=list)
    num_frames: int | None = None  # frames in the whole video

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


def eval_config(model, views: str | None = None):
    """The DataConfig a model is evaluated with (its preset's test views, or `views` 'CLIPSxCROPS')."""
    from mtv.data.config import data_config
    from mtv.eval.evaluate import eval_dataset_configs

    clips, crops = parse_views(views) if views else (None, None)
    return data_config(eval_dataset_configs(model=model, clips=clips, crops=crops))


def open_source(video: str | os.PathLike, model, config):
    """A `VideoSource` of a video file or frames directory for `model`: frames resized as decoded, audio if needed."""
    from mtv.data.preprocessor import VideoPreprocessor
    from mtv.data.video import VideoSource

    pre = VideoPreprocessor(config.crop_size, config.min_resize, config.num_spatial_crops, config.zero_centering)
    return VideoSource(video, frame_transform=pre.resize, with_audio="audio" in model.input_shapes)


def clip_inputs(source, model, config, clips: np.ndarray, *, missing_modality: str = "error") -> tuple[Any, list]:
    """The model's inputs for clip indices [clips, T] of a `VideoSource`: ([views, ...] or a dict by input, notes)."""
    from mtv.data.transforms import eval_transform

    if not is_multimodal(model):
        return np.asarray(eval_transform(source.gather(clips), config)), []
    from mtv.eval.multimodal_inputs import multimodal_views

    return multimodal_views(source, model, config, missing_modality=missing_modality, clips=clips)


def eval_inputs(video: str | os.PathLike, model, views: str | None = None, *,
                missing_modality: str = "error") -> EvalInputs:
    """Evaluation views of a video file or frames directory for `model`, every input it takes.

    Only the sampled clips are decoded (`mtv.data.video.VideoSource`: a file is read by seeking, a frames
    directory reads only the needed files), so the cost depends on the views, not on the video's length; the
    views equal those of decoding the whole video and then sampling.
    """
    from mtv.data.sampling import eval_clip_indices

    if is_multimodal(model):
        from mtv.eval.multimodal_inputs import check_missing_mode

        check_missing_mode(missing_modality)  # a bad value fails before any decoding
    config = eval_config(model, views)
    source = open_source(video, model, config)
    clips = eval_clip_indices(source.num_frames, config.num_frames, config.stride, config.num_test_clips,
                              source=str(source.path))
    inputs, notes = clip_inputs(source, model, config, clips, missing_modality=missing_modality)
    return EvalInputs(inputs, config, source.decoded, notes, num_frames=source.num_frames)


def eval_views(video: str | os.PathLike, model, views: str | None = None) -> tuple[Any, Any, int]:
    """Evaluation views of a video file or frames directory: (float32 views, DataConfig, frames decoded)."""
    got = eval_inputs(video, model, views)
    return got.inputs, got.config, got.num_frames_decoded


def view_logits(model, got: EvalInputs, batch_size: int = 4) -> dict[str, np.ndarray]:
    """The model's logits for every view of `got`, `batch_size` views a call: {head: [views, classes]}."""
    outputs: dict[str, list] = {}
    for start in range(0, got.num_views, batch_size):
        out = model(got.batch(start, batch_size), training=False)
        out = out if isinstance(out, dict) else {"logits": out}
        for head, value in out.items():
            outputs.setdefault(head, []).append(np.asarray(value))
    return {head: np.concatenate(chunks) for head, chunks in outputs.items()}


def class_names(model, head: str) -> list[str] | None:
    """A head's class names from the model's preset metadata, or None."""
    names = (getattr(model, "metadata", None) or {}).get("class_names")
    return names.get(head) if isinstance(names, dict) else names


def top_labels(probs: np.ndarray, names: list[str] | None, top: int) -> list[dict]:
    """The `top` most probable classes: [{'index', 'label', 'probability'}], most probable first."""
    order, _ = numeric.top_k(probs, top)
    return [{"index": int(i), "label": names[i] if names else str(int(i)), "probability": float(probs[i])}
            for i in order]


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
    heads = {head: top_labels(average_views(logits, rule), class_names(model, head), top)
             for head, logits in view_logits(model, got, batch_size).items()}
    config = got.config
    return {"video": os.fspath(video), "model": os.fspath(handle) if isinstance(handle, (str, os.PathLike))
            else type(model).__name__, "views": f"{config.num_test_clips}x{config.num_spatial_crops}",
            "rule": rule, "num_frames": got.num_frames, "num_frames_decoded": got.num_frames_decoded,
            "inputs": list(model.input_shapes),
            "notes": got.notes, "heads": heads}
