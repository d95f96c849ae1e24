"""Temporal sampling of clips as frame-index arrays, with the maths of DMVR's processors.

A clip is `num_frames` indices `offset + k * stride`. Training draws `offset` uniformly from
`[0, max(num_total - (num_frames - 1) * stride, 1))` (DMVR `sample_sequence(random=True)`).
Evaluation with one clip takes the middle one, `offset = max(0, (num_total - num_frames * stride) // 2)`;
with `num_clips > 1` the offsets are `int(linspace(0, max(0, num_total - num_frames * stride), num_clips))`
(DMVR `sample_linspace_sequence`). An index past the end wraps around (`index % num_total`): a video
shorter than a clip is padded by looping it, as DMVR does by tiling the sequence.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from mtv.errors import DataError


def _check(num_total: int, num_frames: int, stride: int) -> None:
    if num_total < 1:
        raise DataError(f"cannot sample a clip from a video with {num_total} frames")
    if num_frames < 1 or stride < 1:
        raise DataError(f"num_frames ({num_frames}) and stride ({stride}) must both be >= 1")


def _loop(indices: np.ndarray, num_total: int, num_frames: int, stride: int, source: str | None) -> np.ndarray:
    """Wraps indices past the end of the video, warning that the clip was padded by looping."""
    if indices.max() >= num_total:
        logging.warning(
            "video %sof %d frames is shorter than a clip of %d frames at stride %d: padded by looping it",
            f"'{source}' " if source else "", num_total, num_frames, stride)
    return (indices % num_total).astype(np.int64)


def clip_indices(offset: int, num_total: int, num_frames: int, stride: int,
                 source: str | None = None) -> np.ndarray:
    """Indices of the clip starting at `offset`, looping past the end of the video."""
    _check(num_total, num_frames, stride)
    return _loop(offset + stride * np.arange(num_frames), num_total, num_frames, stride, source)


def train_clip_indices(num_total: int, num_frames: int, stride: int, rng: np.random.Generator,
                       source: str | None = None) -> np.ndarray:
    """One clip at a random start: int64 [num_frames]."""
    _check(num_total, num_frames, stride)
    max_offset = max(num_total - (num_frames - 1) * stride, 1)
    offset = int(rng.integers(0, max_offset))
    return clip_indices(offset, num_total, num_frames, stride, source)


def eval_clip_offsets(num_total: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
    """Start frames of the evaluation clips: the middle clip, or `num_clips` evenly spaced."""
    _check(num_total, num_frames, stride)
    if num_clips < 1:
        raise DataError(f"num_clips must be >= 1, got {num_clips}")
    span = max(0, num_total - num_frames * stride)
    if num_clips == 1:
        return np.array([span // 2], np.int64)
    # float32 like tf.linspace, then truncation like the tf.cast in DMVR.
    return np.linspace(0.0, float(span), num_clips, dtype=np.float32).astype(np.int64)


def eval_clip_indices(num_total: int, num_frames: int, stride: int, num_clips: int,
                      source: str | None = None) -> np.ndarray:
    """`num_clips` evaluation clips: int64 [num_clips, num_frames]."""
    offsets = eval_clip_offsets(num_total, num_frames, stride, num_clips)
    indices = offsets[:, None] + stride * np.arange(num_frames)[None, :]
    return _loop(indices, num_total, num_frames, stride, source)


# --------------------------------------------------------------------------- TensorFlow (tf.data graphs)
def train_clip_indices_tf(num_total, num_frames: int, stride: int, seed):
    """`train_clip_indices` as TF ops: the offset is drawn uniformly with a stateless seed (int [2]).

    No warning for a looped short video here (it would need a host callback); the index maths is the same.
    """
    import tensorflow as tf

    num_total = tf.cast(num_total, tf.int64)
    max_offset = tf.maximum(num_total - (num_frames - 1) * stride, 1)
    offset = tf.random.stateless_uniform([], seed, 0, max_offset, dtype=tf.int64)
    return (offset + stride * tf.range(num_frames, dtype=tf.int64)) % num_total


def eval_clip_offsets_tf(num_total, num_frames: int, stride: int, num_clips: int):
    """`eval_clip_offsets` as TF ops, bit-exact: NumPy's float64 linspace, rounded to float32, truncated."""
    import tensorflow as tf

    if num_clips < 1:
        raise DataError(f"num_clips must be >= 1, got {num_clips}")
    span = tf.maximum(tf.cast(num_total, tf.int64) - num_frames * stride, 0)
    if num_clips == 1:
        return tf.reshape(span // 2, [1])
    stop = tf.cast(span, tf.float64)
    steps = tf.range(num_clips, dtype=tf.float64) * (stop / (num_clips - 1))
    steps = tf.concat([steps[:-1], tf.reshape(stop, [1])], 0)  # np.linspace sets the last one to `stop`
    return tf.cast(tf.cast(steps, tf.float32), tf.int64)


def eval_clip_indices_tf(num_total, num_frames: int, stride: int, num_clips: int):
    """`eval_clip_indices` as TF ops: int64 [num_clips, num_frames]."""
    import tensorflow as tf

    offsets = eval_clip_offsets_tf(num_total, num_frames, stride, num_clips)
    indices = offsets[:, None] + stride * tf.range(num_frames, dtype=tf.int64)[None, :]
    return indices % tf.cast(num_total, tf.int64)
