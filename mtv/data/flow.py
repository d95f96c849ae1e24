"""Optical flow as 2-channel frames: precomputed TV-L1 u/v JPEGs, or OpenCV Farnebäck.

One representation for both paths. Stored: uint8 with 128 = no motion and `FLOW_BOUND` pixels
(20, Epic-Kitchens' TV-L1 bound) mapped to the ends: `q = clip(round(128 + 128 * d / FLOW_BOUND), 0, 255)`
for a displacement of `d` pixels. In memory: float32 `(q - 128) / 128`, in [-1, 1), channel 0 the
horizontal motion (positive = rightwards) and channel 1 the vertical (positive = downwards).
Multiply by `FLOW_BOUND` for pixels.

Epic-Kitchens layout: `<dir>/u/frame_0000000001.jpg` and `<dir>/v/frame_0000000001.jpg` (greyscale),
`<dir>` being `<root>/<P>/flow_frames/<video_id>`. Epic computed TV-L1 on every second RGB frame for the
EPIC-55 videos (`PXX_YY`) and on every frame for the EPIC-100 extension (`PXX_1YY`), so RGB frame `n`
(1-based) is flow frame `(n - 1) // stride + 1` (the rule of Epic's own
`C1-Action-Recognition-TSN-TRN-TSM/src/convert_rgb_to_flow_frame_idxs.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from mtv.data.video import list_frame_files, read_image
from mtv.errors import DataError, ShapeError

FLOW_BOUND = 20.0


def quantize(flow_pixels: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Pixel displacements -> uint8 with 128 = zero motion."""
    return np.clip(np.round(128.0 + 128.0 * np.asarray(flow_pixels) / bound), 0, 255).astype(np.uint8)


def dequantize(flow_uint8: np.ndarray) -> np.ndarray:
    """uint8 flow (128 = zero) -> float32 (q - 128) / 128."""
    return (np.asarray(flow_uint8, np.float32) - 128.0) / 128.0


def to_pixels(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Float flow in the [-1, 1) representation -> pixel displacements."""
    return np.asarray(flow, np.float32) * bound


def read_flow_dir(path: str | Path, *, frame_range: tuple[int, int] | None = None,
                  as_uint8: bool = False) -> np.ndarray:
    """Reads `u/` and `v/` greyscale JPEG frames: float32 [T, H, W, 2] (or the uint8 form)."""
    path = Path(path)
    if not (path / "u").is_dir() or not (path / "v").is_dir():
        raise DataError(f"flow directory '{path}' needs 'u' and 'v' subdirectories of frames")
    u_files, v_files = list_frame_files(path / "u"), list_frame_files(path / "v")
    if [f.name for f in u_files] != [f.name for f in v_files]:
        raise DataError(f"flow directory '{path}': 'u' has {len(u_files)} frames and 'v' has {len(v_files)}, "
                        "with different names; expected the same frame names in both")
    if frame_range is not None:
        u_files, v_files = u_files[frame_range[0]:frame_range[1]], v_files[frame_range[0]:frame_range[1]]
    if not u_files:
        raise DataError(f"flow directory '{path}' has no frames in range {frame_range}")
    frames = []
    for u, v in zip(u_files, v_files, strict=True):
        pair = np.stack([read_image(u, cv2.IMREAD_GRAYSCALE), read_image(v, cv2.IMREAD_GRAYSCALE)], axis=-1)
        frames.append(pair)
    if len({f.shape for f in frames}) > 1:
        raise DataError(f"flow frames in '{path}' have different sizes")
    flow = np.stack(frames)
    return flow if as_uint8 else dequantize(flow)


def epic_flow_stride(video_id: str) -> int:
    """RGB frames per Epic flow frame: 2 for EPIC-55 videos (`P01_11`), 1 for EPIC-100's (`P01_101`)."""
    match = re.fullmatch(r"P\d+_(\d+)", video_id)
    if match is None:
        raise DataError(f"video_id '{video_id}' is not an Epic-Kitchens id (PXX_YY or PXX_1YY), so the RGB frames "
                        "per flow frame are unknown: give the flow stride (`--flow_stride`)")
    return 1 if len(match.group(1)) == 3 else 2


def epic_flow_numbers(rgb_start: int, rgb_stop: int, stride: int) -> tuple[int, int]:
    """Flow frame numbers `(first, last)` (1-based, inclusive) for RGB frames `rgb_start..rgb_stop` (same).

    The motion between the segment's own frames: from the flow frame of `rgb_start` to the one of
    `rgb_stop - 1` (the last frame that has a successor inside the segment).
    """
    if rgb_start < 1 or rgb_stop < rgb_start or stride < 1:
        raise DataError(f"RGB frames {rgb_start}..{rgb_stop} at flow stride {stride}: expected "
                        "1 <= start <= stop and stride >= 1")
    first = (rgb_start - 1) // stride + 1
    return first, max(first, (rgb_stop - 2) // stride + 1)


def read_epic_flow(path: str | Path, first: int, last: int, *, as_uint8: bool = False) -> np.ndarray:
    """Epic flow frames `first..last` (1-based, inclusive) of `<path>/{u,v}/frame_%010d.jpg`.

    Every one of them must be there: a missing frame raises a DataError naming how many are missing
    and the first one, never a shorter or shifted clip.
    """
    path = Path(path)
    if not (path / "u").is_dir() or not (path / "v").is_dir():
        raise DataError(f"flow directory '{path}' needs 'u' and 'v' subdirectories of frames")
    names = [f"frame_{n:010d}.jpg" for n in range(first, last + 1)]
    missing = [f"{c}/{n}" for n in names for c in ("u", "v") if not (path / c / n).is_file()]
    if missing:
        raise DataError(f"flow frames {first}..{last} of '{path}': {len(missing)} of {2 * len(names)} u/v files "
                        f"are missing, e.g. '{missing[0]}'")
    frames = []
    for name in names:
        u, v = (read_image(path / c / name, cv2.IMREAD_GRAYSCALE) for c in ("u", "v"))
        if u.shape != v.shape:
            raise DataError(f"flow frame '{path}/{{u,v}}/{name}': u is {u.shape} and v is {v.shape}; expected one size")
        frames.append(np.stack([u, v], axis=-1))
    if len({f.shape for f in frames}) > 1:
        raise DataError(f"flow frames {first}..{last} of '{path}' have different sizes")
    flow = np.stack(frames)
    return flow if as_uint8 else dequantize(flow)


def farneback_pixels(frames: np.ndarray) -> np.ndarray:
    """Farnebäck flow between consecutive RGB frames, in pixels: float32 [T - 1, H, W, 2]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ShapeError(f"flow needs at least 2 RGB frames [T, H, W, 3], got {list(frames.shape)}")
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames.astype(np.uint8)]
    out = np.empty((len(grey) - 1, *grey[0].shape, 2), np.float32)
    for t in range(len(grey) - 1):
        out[t] = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, pyr_scale=0.5, levels=3,
                                              winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    return out


def compute_flow(frames: np.ndarray, *, bound: float = FLOW_BOUND, as_uint8: bool = False) -> np.ndarray:
    """Flow from frame t to t + 1, quantised like TV-L1 JPEGs: float32 [T - 1, H, W, 2] (or uint8)."""
    q = quantize(farneback_pixels(frames), bound)
    return q if as_uint8 else dequantize(q)


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes float flow frames to (height, width), scaling the displacements with the image."""
    t, h, w, _ = flow.shape
    if (h, w) == (height, width):
        return flow
    out = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in flow])
    return (out * np.array([width / w, height / h], np.float32)).astype(np.float32)


def dequantize_tf(flow_uint8):
    """`dequantize` as TF ops: uint8 flow (128 = zero) -> float32 (q - 128) / 128."""
    import tensorflow as tf

    return (tf.cast(flow_uint8, tf.float32) - 128.0) / 128.0


def resize_flow_tf(flow, height, width):
    """`resize_flow` as TF ops (bilinear, half-pixel centres like OpenCV's INTER_LINEAR), displacements scaled."""
    import tensorflow as tf

    shape = tf.shape(flow)
    h, w = shape[1], shape[2]
    scale = tf.stack([tf.cast(width, tf.float32) / tf.cast(w, tf.float32),
                      tf.cast(height, tf.float32) / tf.cast(h, tf.float32)])
    same = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
    return tf.cond(same, lambda: flow, lambda: tf.image.resize(flow, tf.stack([height, width])) * scale)
