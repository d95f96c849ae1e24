"""The one video preprocessor: uint8 frames -> resize the smaller side -> crop(s) -> floats in [-1, 1].

Evaluation (`mtv.data.transforms.eval_transform`: `mtv evaluate`, training's validation), `mtv predict` and
the exported `serving_uint8` signature all go through this module, so one clip gets the same pixels on
every path. The semantics are Scenic's (DMVR's processors):

- resize: bilinear `tf.image.resize` (no antialiasing); the smaller side becomes `min_resize`, the other
  `max(min_resize, side * min_resize // smaller)` (integer floor); the result is cast back to the input
  dtype, so uint8 frames are truncated to uint8 as DMVR does. Frames already that size are left alone.
- one crop: the central crop at floor((H - crop) / 2), floor((W - crop) / 2) (DMVR's `crop_image`),
  zero-padded when the frame is smaller.
- three crops: Scenic's `three_spatial_crops`: along the longer side at the start, at
  ceil((L - crop) / 2) and at the end; centred along the shorter side.
- scale: uint8 [0, 255] -> x * 2/255 - 1 (`zero_centering`) or x / 255.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from mtv.errors import ConfigError


def resize_smallest(frames: tf.Tensor, min_resize: int, *, is_flow: bool = False) -> tf.Tensor:
    """Bilinear resize of frames [..., H, W, C] (rank 3 or 4) so that min(H, W) == min_resize."""
    shape = tf.shape(frames)
    height, width = shape[-3], shape[-2]
    out_h = tf.maximum(min_resize, height * min_resize // width)
    out_w = tf.maximum(min_resize, width * min_resize // height)

    def resize():
        return tf.cast(tf.image.resize(frames, tf.stack([out_h, out_w])), frames.dtype)

    out = tf.cond((out_h != height) | (out_w != width), resize, lambda: frames)
    if is_flow:
        out = out * tf.cast(out_h / height, out.dtype)
    return out


def pad_to_at_least(frames: tf.Tensor, size: int) -> tf.Tensor:
    """Zero-pads frames [T, H, W, C] (centred) so that H and W are at least `size`."""
    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    pad_h = tf.maximum(size - height, 0)
    pad_w = tf.maximum(size - width, 0)
    return tf.pad(frames, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])


def central_crop(frames: tf.Tensor, size: int) -> tf.Tensor:
    """The central size x size crop of frames [T, H, W, C] (zero-padded if smaller), as DMVR."""
    return tf.image.resize_with_crop_or_pad(frames, size, size)


def spatial_crop(frames: tf.Tensor, size: int, index: int) -> tf.Tensor:
    """Crop 0, 1 or 2 of `three_spatial_crops`."""
    frames = pad_to_at_least(frames, size)
    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    y = (height - size + 1) // 2  # ceil((H - size) / 2), as Scenic's deterministic_crop
    x = (width - size + 1) // 2
    along_height = height > width  # crops move along the longer side
    if index == 0:
        y, x = tf.where(along_height, 0, y), tf.where(along_height, x, 0)
    elif index == 2:
        y, x = tf.where(along_height, height - size, y), tf.where(along_height, x, width - size)
    return tf.slice(frames, tf.stack([0, y, x, 0]), tf.stack([-1, size, size, -1]))


def three_spatial_crops(frames: tf.Tensor, size: int) -> tf.Tensor:
    """Left/centre/right crops (top/centre/bottom if H > W), as Scenic: [3, T, size, size, C]."""
    return tf.stack([spatial_crop(frames, size, i) for i in range(3)])


def normalize(frames, zero_centering: bool = True):
    """uint8 [0, 255] -> float32 [-1, 1] (zero_centering) or [0, 1]; a NumPy array stays NumPy."""
    # One formula for both array kinds: training's NumPy batches must match the TF graphs bit for bit.
    frames = frames.astype(np.float32) if isinstance(frames, np.ndarray) else tf.cast(frames, tf.float32)
    return frames * (2.0 / 255.0) - 1.0 if zero_centering else frames / 255.0


def preprocess(clips: tf.Tensor, *, crop_size: int, min_resize: int, num_crops: int = 1,
               zero_centering: bool = True, is_flow: bool = False) -> tf.Tensor:
    """uint8 clips [N, T, H, W, C] -> float32 views [N * crops, T, crop, crop, C], clip-major.

    View `n * crops + k` is crop `k` of clip `n`. With `is_flow`, `clips` are float flow in [-1, 1]:
    resized with their values rescaled, clipped to [-1, 1], not normalised.
    """
    if num_crops not in (1, 3):
        raise ConfigError(f"num_crops must be 1 (central crop) or 3 (Scenic's three spatial crops), got {num_crops}")
    shape = tf.shape(clips)
    frames = tf.reshape(clips, tf.concat([[-1], shape[2:]], axis=0))
    frames = resize_smallest(frames, min_resize, is_flow=is_flow)
    size = crop_size
    if num_crops == 3:
        crops = three_spatial_crops(frames, size)  # [3, N * T, s, s, C]
        crops = tf.reshape(crops, tf.stack([3, shape[0], shape[1], size, size, shape[4]]))
        views = tf.reshape(tf.transpose(crops, [1, 0, 2, 3, 4, 5]), tf.stack([-1, shape[1], size, size, shape[4]]))
    else:
        views = tf.reshape(central_crop(frames, size), tf.stack([-1, shape[1], size, size, shape[4]]))
    views = tf.clip_by_value(views, -1.0, 1.0) if is_flow else normalize(views, zero_centering)
    views.set_shape([None, clips.shape[1], size, size, clips.shape[-1]])
    return views


def video_input_shape(model) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of a model's video input: 'rgb' of `input_shapes`, else its first input."""
    shapes = model.input_shapes
    return tuple(int(d) for d in (shapes["rgb"] if "rgb" in shapes else next(iter(shapes.values()))))


@dataclasses.dataclass(frozen=True)
class VideoPreprocessor:
    """Resize the smaller side to `min_resize`, take 1 or 3 `crop_size` crops, scale to [-1, 1] (or [0, 1])."""

    crop_size: int
    min_resize: int
    num_crops: int = 1
    zero_centering: bool = True

    def __post_init__(self):
        if self.num_crops not in (1, 3):
            raise ConfigError(f"num_crops must be 1 or 3, got {self.num_crops}")
        if self.crop_size < 1 or self.min_resize < 1:
            raise ConfigError(f"crop_size and min_resize must be positive, got {self.crop_size}, {self.min_resize}")

    @classmethod
    def from_model(cls, model, *, num_crops: int = 1, min_resize: int | None = None) -> VideoPreprocessor:
        """The preprocessing a model was evaluated with: its preset metadata, else a central crop of the short side."""
        _, height, width, _ = video_input_shape(model)
        if height != width:
            raise ConfigError(f"the video preprocessor makes square crops; the model's input is {height}x{width}")
        pre = (getattr(model, "metadata", None) or {}).get("preprocessing") or {}
        return cls(crop_size=height, min_resize=int(min_resize or pre.get("min_resize") or height),
                   num_crops=num_crops, zero_centering=bool(pre.get("zero_centering", True)))

    def __call__(self, clips, *, is_flow: bool = False) -> tf.Tensor:
        """uint8 clips [N, T, H, W, C] -> float32 views [N * crops, T, crop, crop, C] (see `preprocess`)."""
        return preprocess(tf.convert_to_tensor(clips), crop_size=self.crop_size, min_resize=self.min_resize,
                          num_crops=self.num_crops, zero_centering=self.zero_centering, is_flow=is_flow)

    def resize(self, frames) -> np.ndarray:
        """uint8 frames [H, W, C] or [T, H, W, C] resized as `__call__` resizes them (for resizing while decoding)."""
        return resize_smallest(tf.convert_to_tensor(frames), self.min_resize).numpy()
