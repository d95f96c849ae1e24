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

Every function takes a NumPy array or a TensorFlow tensor and answers in kind. NumPy input is computed with
NumPy, so prediction needs neither TensorFlow nor a particular Keras backend; tensors (the tf.data pipeline,
the serving graph) use TensorFlow ops. The NumPy resize does TensorFlow's float32 arithmetic in its order
(half-pixel source coordinates, two horizontal lerps, one vertical), so both give the same bytes
(tests/test_preprocessor.py checks it on real frames).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtv.errors import ConfigError, ShapeError
from mtv.utils.lazy_tf import LazyTensorFlow, is_tf_tensor

tf = LazyTensorFlow("the TensorFlow video preprocessing (tf.data pipeline, serving signature)")


# ------------------------------------------------------------------------------------------ NumPy
def _source_lerp(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, weight) per output pixel of TensorFlow's half-pixel bilinear resize, in its float32 steps."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lower = np.minimum(np.maximum(floor.astype(np.int64), 0), upper)
    return lower, upper, (src - floor).astype(np.float32)


def _np_bilinear(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`tf.image.resize(frames, (out_h, out_w))` (bilinear, no antialiasing) in NumPy: float32 [..., H', W', C]."""
    x = frames.astype(np.float32, copy=False)
    y0, y1, wy = _source_lerp(x.shape[-3], out_h)
    x0, x1, wx = _source_lerp(x.shape[-2], out_w)
    low, high = x[..., y0, :, :], x[..., y1, :, :]
    wx = wx[:, None]
    top = low[..., x0, :] + (low[..., x1, :] - low[..., x0, :]) * wx
    bottom = high[..., x0, :] + (high[..., x1, :] - high[..., x0, :]) * wx
    return top + (bottom - top) * wy[:, None, None]


def _np_resize_smallest(frames: np.ndarray, min_resize: int, is_flow: bool) -> np.ndarray:
    height, width = frames.shape[-3], frames.shape[-2]
    out_h = max(min_resize, height * min_resize // width)
    out_w = max(min_resize, width * min_resize // height)
    out = frames
    if (out_h, out_w) != (height, width):
        out = _np_bilinear(frames, out_h, out_w).astype(frames.dtype)  # float -> uint8 truncates, as tf.cast
    if is_flow:
        out = out * np.asarray(out_h / height, out.dtype)
    return out


def _np_pad_to_at_least(frames: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(size - frames.shape[1], 0), max(size - frames.shape[2], 0)
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])


def _np_spatial_crop(frames: np.ndarray, size: int, index: int | None) -> np.ndarray:
    """Crop `index` (0, 1, 2) of `three_spatial_crops`, or DMVR's central crop (floor offsets) for None."""
    frames = _np_pad_to_at_least(frames, size)
    height, width = frames.shape[1], frames.shape[2]
    if index is None:
        y, x = (height - size) // 2, (width - size) // 2
    else:
        y, x = (height - size + 1) // 2, (width - size + 1) // 2
        along_height = height > width
        if index == 0:
            y, x = (0, x) if along_height else (y, 0)
        elif index == 2:
            y, x = (height - size, x) if along_height else (y, width - size)
    return frames[:, y:y + size, x:x + size]


# ------------------------------------------------------------------------------------- both kinds
def resize_smallest(frames, min_resize: int, *, is_flow: bool = False):
    """Bilinear resize of frames [..., H, W, C] (rank 3 or 4) so that min(H, W) == min_resize."""
    if not is_tf_tensor(frames):
        return _np_resize_smallest(np.asarray(frames), min_resize, is_flow)
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


def pad_to_at_least(frames, size: int):
    """Zero-pads frames [T, H, W, C] (centred) so that H and W are at least `size`."""
    if not is_tf_tensor(frames):
        return _np_pad_to_at_least(np.asarray(frames), size)
    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    pad_h = tf.maximum(size - height, 0)
    pad_w = tf.maximum(size - width, 0)
    return tf.pad(frames, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])


def central_crop(frames, size: int):
    """The central size x size crop of frames [T, H, W, C] (zero-padded if smaller), as DMVR."""
    if not is_tf_tensor(frames):
        return _np_spatial_crop(np.asarray(frames), size, None)
    return tf.image.resize_with_crop_or_pad(frames, size, size)


def spatial_crop(frames, size: int, index: int):
    """Crop 0, 1 or 2 of `three_spatial_crops`."""
    if not is_tf_tensor(frames):
        return _np_spatial_crop(np.asarray(frames), size, index)
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


def three_spatial_crops(frames, size: int):
    """Left/centre/right crops (top/centre/bottom if H > W), as Scenic: [3, T, size, size, C]."""
    if not is_tf_tensor(frames):
        return np.stack([spatial_crop(frames, size, i) for i in range(3)])
    return tf.stack([spatial_crop(frames, size, i) for i in range(3)])


def normalize(frames, zero_centering: bool = True):
    """uint8 [0, 255] -> float32 [-1, 1] (zero_centering) or [0, 1]; a NumPy array stays NumPy."""
    # One formula for both array kinds: training's NumPy batches must match the TF graphs bit for bit.
    frames = tf.cast(frames, tf.float32) if is_tf_tensor(frames) else np.asarray(frames).astype(np.float32)
    return frames * (2.0 / 255.0) - 1.0 if zero_centering else frames / 255.0


def preprocess(clips, *, crop_size: int, min_resize: int, num_crops: int = 1, zero_centering: bool = True,
               is_flow: bool = False):
    """uint8 clips [N, T, H, W, C] -> float32 views [N * crops, T, crop, crop, C], clip-major.

    View `n * crops + k` is crop `k` of clip `n`. With `is_flow`, `clips` are float flow in [-1, 1]:
    resized with their values rescaled, clipped to [-1, 1], not normalised. NumPy in, NumPy out.
    """
    if num_crops not in (1, 3):
        raise ConfigError(f"num_crops must be 1 (central crop) or 3 (Scenic's three spatial crops), got {num_crops}")
    if not is_tf_tensor(clips):
        return _np_preprocess(np.asarray(clips), crop_size, min_resize, num_crops, zero_centering, is_flow)
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


def _np_preprocess(clips: np.ndarray, size: int, min_resize: int, num_crops: int, zero_centering: bool,
                   is_flow: bool) -> np.ndarray:
    if clips.ndim != 5:
        raise ShapeError(f"preprocess expects clips [N, T, H, W, C], got shape {list(clips.shape)}")
    n, t, channels = clips.shape[0], clips.shape[1], clips.shape[-1]
    frames = resize_smallest(clips.reshape(-1, *clips.shape[2:]), min_resize, is_flow=is_flow)
    if num_crops == 3:
        crops = three_spatial_crops(frames, size).reshape(3, n, t, size, size, channels)
        views = crops.transpose(1, 0, 2, 3, 4, 5).reshape(-1, t, size, size, channels)
    else:
        views = central_crop(frames, size).reshape(-1, t, size, size, channels)
    return np.clip(views, -1.0, 1.0) if is_flow else normalize(views, zero_centering)


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

    def __call__(self, clips, *, is_flow: bool = False):
        """uint8 clips [N, T, H, W, C] -> float32 views [N * crops, T, crop, crop, C] (see `preprocess`).

        NumPy (or anything array-like) in, NumPy out; a TensorFlow tensor in, a tensor out.
        """
        return preprocess(clips, crop_size=self.crop_size, min_resize=self.min_resize, num_crops=self.num_crops,
                          zero_centering=self.zero_centering, is_flow=is_flow)

    def resize(self, frames) -> np.ndarray:
        """uint8 frames [H, W, C] or [T, H, W, C] resized as `__call__` resizes them (for resizing while decoding)."""
        return np.asarray(resize_smallest(np.asarray(frames), self.min_resize))
