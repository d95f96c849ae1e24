"""Spatial transforms and augmentations of clips, as TensorFlow ops (tf.data or eager), DMVR's maths.

Clips are [T, H, W, C]. Random ops are stateless: they take `seed`, a pair of ints (or an int
tensor of shape [2]); `None` draws one from TensorFlow's global generator.

The training chain (`train_transform`) is Scenic's: resize the smaller side to `min_resize`,
scale jitter, random crop, random flip, RandAugment (uint8, before normalising), normalise,
colour augmentation (on the normalised floats). As in Scenic's `additional_augmentations`, only one
of RandAugment / colour augmentation runs, RandAugment first. Evaluation (`eval_transform`) is the one
video preprocessor (`mtv.data.preprocessor`): resize, a central crop or three spatial crops, normalise.

TensorFlow is imported on first use: `video_to_eval_views` (what `mtv.predict` uses) and the NumPy helpers
(mixup, labels) run without it, on any Keras backend.
"""

from __future__ import annotations

import numpy as np

from mtv.data.config import DataConfig, data_config
from mtv.data.preprocessor import (  # noqa: F401  (re-exported: the eval crops live in the preprocessor)
    central_crop,
    normalize,
    pad_to_at_least,
    preprocess,
    resize_smallest,
    spatial_crop,
    three_spatial_crops,
)
from mtv.data.sampling import eval_clip_indices
from mtv.data.video import Video
from mtv.errors import ShapeError
from mtv.utils.lazy_tf import LazyTensorFlow

tf = LazyTensorFlow("the tf.data augmentations (mtv.data.transforms)")


def as_seed(seed) -> tf.Tensor:
    """An int32 [2] stateless seed from a pair, a tensor, or None (random)."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    return tf.cast(tf.convert_to_tensor(seed), tf.int32)


def split_seed(seed, num: int) -> tf.Tensor:
    """`num` independent int32 [2] seeds derived from `seed`: [num, 2]."""
    seeds = tf.random.experimental.stateless_split(tf.cast(as_seed(seed), tf.int64), num)
    return tf.cast(seeds % (2**31 - 1), tf.int32)


def _coin(prob: float, seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < prob


def scale_jitter(frames: tf.Tensor, min_scale_factor: float = 0.9, max_scale_factor: float = 1.33,
                 prob: float = 1.0, seed=None, *, is_flow: bool = False) -> tf.Tensor:
    """With probability `prob`, rescales height and width by independent factors in [min, max)."""
    seeds = split_seed(seed, 3)
    h_scale = tf.random.stateless_uniform([], seeds[0], min_scale_factor, max_scale_factor)
    w_scale = tf.random.stateless_uniform([], seeds[1], min_scale_factor, max_scale_factor)

    def jitter():
        shape = tf.cast(tf.shape(frames)[1:3], tf.float32)
        size = tf.cast(tf.stack([h_scale, w_scale]) * shape, tf.int32)
        out = tf.cast(tf.image.resize(frames, size), frames.dtype)
        if is_flow:
            out = out * tf.stack([w_scale, h_scale])  # channel 0 is horizontal motion
        return out

    return tf.cond(_coin(prob, seeds[2]), jitter, lambda: frames)


def crop_offsets(frames: tf.Tensor, size: int, seed) -> tf.Tensor:
    """Random (y, x) offsets of a size x size crop, uniform over all positions."""
    limit = tf.shape(frames)[1:3] - size + 1
    return tf.random.stateless_uniform([2], as_seed(seed), 0, tf.int32.max, dtype=tf.int32) % limit


def random_crop(frames: tf.Tensor, size: int, seed=None) -> tf.Tensor:
    """A size x size crop at a random position, the same in every frame (padded if too small)."""
    frames = pad_to_at_least(frames, size)
    offset = crop_offsets(frames, size, seed)
    return tf.slice(frames, tf.stack([0, offset[0], offset[1], 0]), tf.stack([-1, size, size, -1]))


def random_flip(frames: tf.Tensor, seed=None, *, is_flow: bool = False) -> tf.Tensor:
    """Flips the whole clip left-right with probability 1/2 (flow: negates horizontal motion)."""

    def flip():
        out = tf.reverse(frames, axis=[2])
        if is_flow:
            out = out * tf.constant([-1.0, 1.0], out.dtype)
        return out

    return tf.cond(_coin(0.5, as_seed(seed)), flip, lambda: frames)


def color_augment(frames: tf.Tensor, *, zero_centering: bool = True, prob_color_augment: float = 0.8,
                  prob_color_drop: float = 0.0, seed=None) -> tf.Tensor:
    """DMVR's colour augmentation of a normalised float clip, one draw for all frames.

    With probability `prob_color_augment`: brightness +-32/255, saturation and contrast x[0.6, 1.4],
    hue +-0.2, clipped; then with probability `prob_color_drop`: greyscale.
    """
    if frames.dtype != tf.float32:
        raise ShapeError(f"color_augment expects normalised float32 frames, got {frames.dtype.name}")
    seeds = split_seed(seed, 6)

    def jitter():
        video = 0.5 * (frames + 1.0) if zero_centering else frames
        video = tf.image.stateless_random_brightness(video, 32.0 / 255.0, seeds[0])
        video = tf.image.stateless_random_saturation(video, 0.6, 1.4, seeds[1])
        video = tf.image.stateless_random_contrast(video, 0.6, 1.4, seeds[2])
        video = tf.image.stateless_random_hue(video, 0.2, seeds[3])
        video = tf.clip_by_value(video, 0.0, 1.0)
        return 2.0 * (video - 0.5) if zero_centering else video

    frames = tf.cond(_coin(prob_color_augment, seeds[4]), jitter, lambda: frames)
    drop = lambda: tf.tile(tf.image.rgb_to_grayscale(frames), [1, 1, 1, 3])
    return tf.cond(_coin(prob_color_drop, seeds[5]), drop, lambda: frames)


def rand_augment(frames: tf.Tensor, num_layers: int = 3, magnitude: float = 10, seed=None) -> tf.Tensor:
    """RandAugment on a [0, 255] clip (see `mtv.data.randaugment` for the op list)."""
    from mtv.data import randaugment

    return randaugment.rand_augment(frames, num_layers, magnitude, as_seed(seed))


def train_transform(frames: tf.Tensor, config: DataConfig, seed=None, *, is_flow: bool = False) -> tf.Tensor:
    """Scenic's training chain: uint8 [T, H, W, 3] -> float32 [T, crop, crop, 3].

    With `is_flow`, `frames` are float flow [T, H, W, 2] in [-1, 1]: they get the same resize, jitter,
    crop and flip as RGB frames given the same seed (values rescaled with the image, horizontal motion
    negated on flip), no photometric change, and are clipped to [-1, 1] as DMVR does.
    """
    seeds = split_seed(seed, 5)
    frames = resize_smallest(frames, config.min_resize, is_flow=is_flow)
    if config.do_jitter_scale:
        frames = scale_jitter(frames, config.scale_min_factor, config.scale_max_factor,
                              config.prob_scale_jitter, seeds[0], is_flow=is_flow)
    frames = random_crop(frames, config.crop_size, seeds[1])
    if config.random_flip:
        frames = random_flip(frames, seeds[2], is_flow=is_flow)
    if is_flow:
        frames = tf.clip_by_value(frames, -1.0, 1.0)
    else:
        if config.do_rand_augment:
            frames = rand_augment(frames, config.rand_augment_num_layers, config.rand_augment_magnitude,
                                  seeds[3])
        frames = normalize(frames, config.zero_centering)
        if config.do_color_augment and not config.do_rand_augment:
            frames = color_augment(frames, zero_centering=config.zero_centering,
                                   prob_color_augment=config.prob_color_augment,
                                   prob_color_drop=config.prob_color_drop, seed=seeds[4])
    frames.set_shape([None, config.crop_size, config.crop_size, frames.shape[-1]])
    return frames


def eval_transform(clips: tf.Tensor, config: DataConfig, *, is_flow: bool = False) -> tf.Tensor:
    """uint8 [clips, T, H, W, C] -> float32 [clips * crops, T, crop, crop, C], clip-major (`mtv.data.preprocessor`).

    With `is_flow`, `clips` are float flow in [-1, 1], resized with their values and not normalised. NumPy in,
    NumPy out (no TensorFlow needed); a tensor in (tf.data), a tensor out.
    """
    return preprocess(clips, crop_size=config.crop_size, min_resize=config.min_resize,
                      num_crops=config.num_spatial_crops, zero_centering=config.zero_centering, is_flow=is_flow)


def video_to_eval_views(
    video: Video | np.ndarray,
    *,
    num_frames: int,
    stride: int,
    num_clips: int,
    crop_size: int,
    min_resize: int,
    three_crops: bool,
    zero_centering: bool = True,
) -> np.ndarray:
    """Evaluation views of one video: float32 [num_clips * crops, num_frames, crop, crop, 3].

    Views are clip-major, crops inner: view `c * crops + k` is crop `k` of clip `c`. Values are in
    [-1, 1] (or [0, 1] without zero_centering). `video` is a Video or uint8 frames [T, H, W, 3].
    """
    frames = video.frames if isinstance(video, Video) else np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ShapeError(f"expected frames of shape [T, H, W, 3], got {list(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ShapeError(f"expected uint8 frames in [0, 255], got dtype {frames.dtype}")
    config = data_config(None, num_frames=num_frames, stride=stride, num_test_clips=num_clips,
                         crop_size=crop_size, min_resize=min_resize, do_three_spatial_crops=three_crops,
                         zero_centering=zero_centering)
    source = video.path if isinstance(video, Video) else None
    indices = eval_clip_indices(frames.shape[0], num_frames, stride, num_clips, source=source)
    return eval_transform(frames[indices], config)  # NumPy in, NumPy out: no TensorFlow needed


def one_hot(labels, num_classes: int) -> np.ndarray:
    """Integer labels [B] (or lists of labels, multi-hot) -> float32 [B, num_classes]."""
    out = np.zeros((len(labels), num_classes), np.float32)
    for row, label in enumerate(labels):
        out[row, np.atleast_1d(label)] = 1.0
    return out


def smooth_labels(one_hot_labels, smoothing: float):
    """Scenic's label smoothing: (1 - s) * y + s / num_classes."""
    num_classes = one_hot_labels.shape[-1]
    return (1.0 - smoothing) * one_hot_labels + smoothing / num_classes


def _mix(tree, weight, flip):
    if isinstance(tree, dict):
        return {k: _mix(v, weight, flip) for k, v in tree.items()}
    return weight * tree + (1.0 - weight) * flip(tree)


def mixup(images: np.ndarray, labels, alpha: float, rng: np.random.Generator):
    """Scenic's mixup of a batch with its reverse: lam ~ Beta(alpha, alpha), one lam per batch.

    `labels` are one-hot [B, C] or a dict of them (e.g. verb and noun), mixed with the same lam.
    Returns (images, labels, lam).
    """
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    flip = lambda x: np.flip(x, axis=0)
    mixed_labels = _mix(labels, lam, flip)
    return (lam * images + (1.0 - lam) * flip(images)).astype(images.dtype), mixed_labels, lam


def mixup_tf(images: tf.Tensor, labels, alpha: float, seed=None):
    """`mixup` inside a tf.data pipeline (stateless Beta draw from two Gammas)."""
    seeds = split_seed(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    lam = a / (a + b)
    flip = lambda x: tf.reverse(x, axis=[0])
    cast = lambda x: tf.cast(lam, x.dtype)
    mixed = tf.nest.map_structure(lambda y: cast(y) * y + (1 - cast(y)) * flip(y), labels)
    return cast(images) * images + (1 - cast(images)) * flip(images), mixed, lam
