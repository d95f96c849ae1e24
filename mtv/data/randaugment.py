"""RandAugment for video clips, temporally consistent: one op and one set of parameters per clip.

Like Scenic's `video_ops.distort_image_with_randaugment`, only ops that do not move pixels are used
(no rotate / shear / translate), statistics (histograms, means, min/max) are taken over the whole
clip, and each of `num_layers` layers picks uniformly among the ops below plus "identity".
Magnitudes map to op arguments as in the AutoAugment/RandAugment reference (max level 10):

| op | argument at magnitude M |
|---|---|
| AutoContrast, Equalize, Invert | none |
| Posterize | keep int(M / 10 * 4) bits |
| Solarize | invert pixels >= int(M / 10 * 256) |
| SolarizeAdd | add int(M / 10 * 110) to pixels < 128 |
| Color, Contrast, Brightness, Sharpness | blend factor M / 10 * 1.8 + 0.1 |
| Cutout | grey (128) square of side 2 * int(M / 10 * 40), same place in every frame |
"""

from __future__ import annotations

import tensorflow as tf

OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "Color", "Contrast",
       "Brightness", "Sharpness", "Cutout", "SolarizeAdd")
MAX_LEVEL = 10.0
CUTOUT_CONST = 40
REPLACE = 128.0


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel's [min, max] over the clip to [0, 255]."""
    lo = tf.reduce_min(image, axis=[0, 1, 2])
    hi = tf.reduce_max(image, axis=[0, 1, 2])
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return tf.clip_by_value((image - offset) * scale, 0.0, 255.0)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(lut, 0, 255)
    return tf.where(step > 0, tf.cast(tf.gather(lut, values), tf.float32), channel)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram-equalises each channel over the whole clip (PIL's rule)."""
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
    """Keeps the top `bits` bits of every value."""
    shift = 8 - bits
    values = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift), tf.float32)


def solarize(image: tf.Tensor, threshold: float) -> tf.Tensor:
    """Inverts the values at or above `threshold`."""
    return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image: tf.Tensor, addition: float, threshold: float = 128.0) -> tf.Tensor:
    """Adds `addition` to the values below `threshold`."""
    return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blends each frame with a 3x3-smoothed copy of itself (borders kept)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image, kernel, [1, 1, 1, 1], padding="VALID")
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    mask = tf.pad(tf.ones_like(smooth[:, 1:-1, 1:-1, :]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    degenerate = mask * smooth + (1.0 - mask) * image
    return _blend(degenerate, image, factor)


def cutout(image: tf.Tensor, pad_size: int, seed: tf.Tensor) -> tf.Tensor:
    """Greys out a (2 * pad_size)^2 square centred at a random pixel, in every frame."""
    height, width = tf.shape(image)[1], tf.shape(image)[2]
    cy = tf.random.stateless_uniform([], seed, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed + 1, 0, width, dtype=tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= cy - pad_size) & (rows < cy + pad_size) & (cols >= cx - pad_size) & (cols < cx + pad_size)
    return tf.where(inside[None, :, :, None], REPLACE, image)


def _op(name: str, image: tf.Tensor, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    level = magnitude / MAX_LEVEL
    factor = level * 1.8 + 0.1
    if name == "AutoContrast":
        return autocontrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return 255.0 - image
    if name == "Posterize":
        return posterize(image, int(level * 4))
    if name == "Solarize":
        return solarize(image, float(int(level * 256)))
    if name == "SolarizeAdd":
        return solarize_add(image, float(int(level * 110)))
    if name == "Color":
        return _blend(_grey(image), image, factor)
    if name == "Contrast":
        mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image))
        return _blend(tf.fill(tf.shape(image), mean), image, factor)
    if name == "Brightness":
        return _blend(tf.zeros_like(image), image, factor)
    if name == "Sharpness":
        return sharpness(image, factor)
    if name == "Cutout":
        return cutout(image, int(level * CUTOUT_CONST), seed)
    raise ValueError(f"unknown RandAugment op '{name}'; expected one of {OPS}")


def apply_op(frames: tf.Tensor, name: str, magnitude: float, seed=(0, 0)) -> tf.Tensor:
    """Applies one named op to a [T, H, W, 3] clip in [0, 255] (uint8 or float); same dtype back."""
    image = tf.cast(frames, tf.float32)
    out = _op(name, image, float(magnitude), tf.cast(tf.convert_to_tensor(seed), tf.int32))
    return tf.cast(out, frames.dtype)


def rand_augment(frames: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    """RandAugment on a [T, H, W, 3] clip with values in [0, 255]; returns the input dtype."""
    dtype = frames.dtype
    image = tf.clip_by_value(tf.cast(frames, tf.float32), 0.0, 255.0)
    if dtype != tf.uint8:
        image = tf.floor(image)  # Scenic casts non-uint8 input to uint8 first
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num_layers * 2)
    seeds = tf.cast(seeds % (2**31 - 1), tf.int32)
    for layer in range(num_layers):
        choice = tf.random.stateless_uniform([], seeds[2 * layer], 0, len(OPS) + 1, dtype=tf.int32)
        branches = [
            (lambda name=name, im=image, s=seeds[2 * layer + 1]: _op(name, im, float(magnitude), s))
            for name in OPS
        ]
        image = tf.switch_case(choice, branches, default=lambda im=image: tf.identity(im))
        image = tf.round(image) if dtype == tf.uint8 else image
    return tf.cast(image, dtype)
