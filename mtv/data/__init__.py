"""mtv.data: decode videos, sample clips, augment, read/write TFRecords, audio log-mels and flow.

The main entry points, imported lazily (TensorFlow loads only with the modules that need it):
read_video, read_frames_dir, load_video, Video (video); train_clip_indices, eval_clip_indices
(sampling); video_to_eval_views, train_transform, eval_transform, mixup, smooth_labels (transforms);
VideoPreprocessor, the one resize/crop/scale of evaluation, prediction and serving (preprocessor);
data_config (config); write_tfrecords, make_dataset, parse_example, ClipExample, SkipCounter
(tfrecord); AudioConfig, clip_log_mel (audio); compute_flow, read_flow_dir (flow).
`mtv.data.prepare.prepare` is the `mtv data prepare` command's function. sample_video() is the path
of the short real clip shipped with the package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

SAMPLE_VIDEO = "flipping_pancake.mkv"  # source and licence: mtv/data/samples/SOURCES.md


def sample_video() -> Path:
    """The bundled sample clip (10 s, 426x240, with an audio track): a real file path."""
    from mtv.errors import DataError
    from mtv.io.resources import resource_path

    path = resource_path("mtv.data", "samples", SAMPLE_VIDEO)
    if not path.is_file():
        raise DataError(f"the bundled sample video is missing: {path} (a broken install?)")
    return path

_LAZY = {
    "Video": "video", "read_video": "video", "read_frames_dir": "video", "load_video": "video",
    "train_clip_indices": "sampling", "eval_clip_indices": "sampling",
    "video_to_eval_views": "transforms", "train_transform": "transforms", "eval_transform": "transforms",
    "mixup": "transforms", "smooth_labels": "transforms",
    "DataConfig": "config", "data_config": "config", "VideoPreprocessor": "preprocessor",
    "ClipExample": "tfrecord", "SkipCounter": "tfrecord", "write_tfrecords": "tfrecord",
    "make_dataset": "tfrecord", "parse_example": "tfrecord",
    "AudioConfig": "audio", "clip_log_mel": "audio", "log_mel_spectrogram": "audio",
    "compute_flow": "flow", "read_flow_dir": "flow",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"mtv.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mtv.data' has no attribute '{name}'")


__all__ = sorted([*_LAZY, "sample_video"])
