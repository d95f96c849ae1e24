"""The simplest localizer a user would try: classify each window, merge adjacent windows of the same label.

The window classifier is the localizer's own backbone (the same config, built by `build_model` as a clip
classifier: `model.localization` is ignored there) trained with softmax cross-entropy on windows cut at
random frames of the same training videos, each labelled by the segment at its centre. At test time a
video is cut into the same consecutive, non-overlapping windows as the localizer's; each window takes its
arg-max class; a run of adjacent windows with the same class is one segment [first start, last end) whose
score is the mean probability of that class over the run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtv.errors import DataError
from mtv.long.datasets import random_span


def centre_label(segments: Sequence, time: float) -> str:
    """The label of the segment holding `time` (the last one for the video's end)."""
    for segment in segments:
        if segment.start <= time < segment.end:
            return segment.label
    if segments and time >= segments[-1].end - 1e-9:
        return segments[-1].label
    raise DataError(f"no segment covers {time:.3f} s; training videos must be annotated end to end for the "
                    "window baseline")


def sample_windows(videos: Sequence, class_names: Sequence[str], window_frames: int, batch: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 windows [B, T, H, W, 3] cut at random frames, class indices [B] of their centre's segment)."""
    clips, labels = [], []
    for _ in range(batch):
        video, first = random_span(videos, window_frames, rng, f"one window needs {window_frames}")
        clips.append(video.frames[first:first + window_frames])
        labels.append(list(class_names).index(centre_label(video.segments, (first + window_frames / 2) / video.fps)))
    return np.stack(clips), np.asarray(labels, np.int64)


def train_window_classifier(config: Any, videos: Sequence, class_names: Sequence[str], *, steps: int,
                            batch: int, seed: int = 0, log=None):
    """The config's backbone (initialised by its `init_from`, if any) as a window classifier, trained `steps` steps."""
    import keras

    from mtv.models.builder import build_model
    from mtv.models.spec import read_config
    from mtv.training.optimizer import make_optimizer
    from mtv.training.schedules import ScenicSchedule, resolve_lr_configs

    plain = copy.deepcopy(read_config(config))
    plain["model"].pop("localization", None)
    model = build_model(plain, num_classes=len(class_names), seed=seed)
    from mtv.training.init_from import initialize

    initialize(model, plain)  # the same `init_from` as the localizer's backbone, so the comparison stays fair
    lr_cfg = resolve_lr_configs(plain.get("lr_configs") or {"base_learning_rate": 0.1}, steps_per_epoch=steps,
                                total_steps=steps)
    model.compile(optimizer=make_optimizer(plain, ScenicSchedule(lr_cfg)),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    from mtv.data.sources import normalize_frames

    window_frames = int(next(iter(model.input_shapes.values()))[0])
    for step in range(steps):
        x, y = sample_windows(videos, class_names, window_frames, batch, np.random.default_rng([seed, step]))
        loss = float(np.asarray(model.train_on_batch(normalize_frames(x), np.eye(len(class_names))[y])))
        if log is not None:
            log(step + 1, loss)
    return model


def window_probabilities(model, frames: np.ndarray, window_frames: int, batch: int = 32) -> np.ndarray:
    """Softmax probabilities [N, C] of the N consecutive whole windows of uint8 frames [T, H, W, 3]."""
    from mtv.data.sources import normalize_frames

    count = len(frames) // window_frames
    if count == 0:
        raise DataError(f"{len(frames)} frames are fewer than one window ({window_frames})")
    windows = frames[:count * window_frames].reshape(count, window_frames, *frames.shape[1:])
    logits = np.concatenate([np.asarray(model(normalize_frames(windows[i:i + batch])))
                             for i in range(0, count, batch)])
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def merge_windows(probabilities: np.ndarray, window_seconds: float, class_names: Sequence[str]) -> list[tuple]:
    """Runs of adjacent windows with the same arg-max class -> [(start, end, label, mean probability)]."""
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise DataError(f"probabilities must be [windows, {len(class_names)}], got {probabilities.shape}")
    best = probabilities.argmax(axis=1)
    segments, first = [], 0
    for i in range(1, len(best) + 1):
        if i == len(best) or best[i] != best[first]:
            label = int(best[first])
            segments.append((first * window_seconds, i * window_seconds, class_names[label],
                             float(probabilities[first:i, label].mean())))
            first = i
    return segments


def evaluate_baseline(model, videos: Sequence, class_names: Sequence[str], window_frames: int) -> dict:
    """mAP@0.3/0.5/0.7 and mean of the merged window classifications on `UntrimmedVideo`s."""
    from mtv.eval.localization_metrics import mean_average_precision

    truth, found = {}, {}
    for video in videos:
        truth[video.name] = [tuple(s) for s in video.segments]
        probs = window_probabilities(model, video.frames, window_frames)
        found[video.name] = merge_windows(probs, window_frames / video.fps, class_names)
    result = mean_average_precision(truth, found)
    result["videos"] = len(videos)
    result["detections"] = sum(len(v) for v in found.values())
    return result
