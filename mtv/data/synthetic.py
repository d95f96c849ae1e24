"""A generated camera-motion dataset: a crop window moving over natural video frames.

Each clip is rendered by moving a square window over the frames of a source video (or a still image),
so the class is the camera's motion and the content is natural footage. Classes (13):

  static                          the window stays put (the scene itself may move)
  pan_left / pan_right            the window moves left / right, so the scene drifts right / left
  tilt_up / tilt_down             the window moves up / down, so the scene drifts down / up
  zoom_in / zoom_out              the window shrinks / grows about a fixed point
each moving one at two speeds, `_slow` and `_fast`. Speeds are in output pixels per frame at a 32-pixel
output and scale with the output size (a 64-pixel clip moves twice as many pixels per frame):
pan/tilt 0.75 (slow) and 2.0 (fast); zoom shrinks/grows the window by 3 % (slow) and 8 % (fast) per
frame. Every clip also gets a random speed factor in [0.8, 1.25], a sub-pixel hand-shake and a random
brightness/contrast change, and starts at a random place and time of its source.

Sources: frames of real videos (`video_sources`, e.g. the clips in shared/data/videos), or procedural
textures (`texture_sources`) when no video is at hand. Nothing binary is stored: clips are made on demand.

As a training dataset it is registered as 'camera_motion' (`mtv.data.datasets`), with options in
`dataset_configs.synthetic`: videos, source_min_resize, textures, num_train, num_eval, eval_seed,
still_fraction. Training batch `s` is rendered from `(seed, s)`; held-out clips come from the held-out video.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from absl import logging

from mtv.data.datasets import DatasetRequest, DataSpec, register_dataset
from mtv.errors import DataError

MOTIONS = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")
CLASSES = ("static",) + tuple(f"{m}_{s}" for m in MOTIONS for s in ("slow", "fast"))
PAN_SPEED = {"slow": 0.75, "fast": 2.0}  # output px per frame at a 32-px output
ZOOM_RATE = {"slow": 0.03, "fast": 0.08}  # relative change of the window side per frame
HELDOUT_VIDEO = "flipping_pancake"  # its camera is still; kept out of training for held-out checks
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


@dataclasses.dataclass(frozen=True)
class Motion:
    """Decoded class: kind ('static', 'pan', 'tilt', 'zoom'), direction (+1 / -1) and speed name."""

    kind: str
    direction: int
    speed: str

    @classmethod
    def of(cls, name: str) -> Motion:
        if name == "static":
            return cls("static", 0, "")
        motion, speed = name.rsplit("_", 1)
        kind, way = motion.split("_")
        direction = {"left": -1, "right": 1, "up": -1, "down": 1, "in": -1, "out": 1}[way]
        return cls(kind, direction, speed)


def class_names() -> list[str]:
    """The 13 class names, in label order."""
    return list(CLASSES)


# --------------------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=32)
def _decode(path: str, min_resize: int, max_frames: int | None) -> np.ndarray:
    from mtv.data.video import read_video

    video = read_video(path, min_resize=min_resize, max_frames=max_frames, with_audio=False)
    return video.frames


def video_sources(videos: str | os.PathLike | Sequence[str | os.PathLike], *, split: str = "train",
                  min_resize: int = 128, max_frames: int | None = 300) -> list[np.ndarray]:
    """Frames (uint8 [T, H, W, 3], smaller side `min_resize`) of source videos.

    `videos` is a directory or a list of files. `split='train'` leaves out the held-out video
    (`HELDOUT_VIDEO` in its name), 'heldout' keeps only it, 'all' keeps every video.
    """
    if isinstance(videos, (str, os.PathLike)) and Path(videos).is_dir():
        paths = sorted(p for p in Path(videos).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    else:
        paths = [Path(p) for p in ([videos] if isinstance(videos, (str, os.PathLike)) else videos)]
    if split == "train":
        paths = [p for p in paths if HELDOUT_VIDEO not in p.name]
    elif split == "heldout":
        paths = [p for p in paths if HELDOUT_VIDEO in p.name]
    elif split != "all":
        raise DataError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if not paths:
        raise DataError(f"no source videos for split '{split}' in {videos}")
    return [_decode(str(p), int(min_resize), max_frames) for p in paths]


def texture_sources(count: int = 8, *, size: tuple[int, int] = (128, 170), seed: int = 0) -> list[np.ndarray]:
    """Still images of smooth random textures with shapes, each as a one-frame source."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = np.zeros((*size, 3), np.float32)
        for scale in (4, 8, 16, 32):
            noise = rng.normal(0, 1, (max(size[0] // scale, 2), max(size[1] // scale, 2), 3)).astype(np.float32)
            image += cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC) * (scale / 32)
        image = (image - image.min()) / (np.ptp(image) + 1e-6) * 255
        for _ in range(12):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
            if rng.random() < 0.5:
                cv2.circle(image, centre, int(rng.integers(3, size[0] // 5)), colour, -1)
            else:
                half = rng.integers(3, size[0] // 5, 2)
                cv2.rectangle(image, (centre[0] - int(half[0]), centre[1] - int(half[1])),
                              (centre[0] + int(half[0]), centre[1] + int(half[1])), colour, -1)
        out.append(np.clip(image, 0, 255).astype(np.uint8)[None])
    return out


# ------------------------------------------------------------------------------------- rendering
def _trajectory(motion: Motion, num_frames: int, size: int, speed_factor: float):
    """Window centre offsets (output px, relative to frame 0) and window sides (relative to frame 0)."""
    k = np.arange(num_frames, dtype=np.float64)
    dx, dy, side = np.zeros(num_frames), np.zeros(num_frames), np.ones(num_frames)
    if motion.kind in ("pan", "tilt"):
        step = PAN_SPEED[motion.speed] * (size / 32.0) * speed_factor * motion.direction
        (dx if motion.kind == "pan" else dy)[:] = step * k
    elif motion.kind == "zoom":
        side = (1.0 + motion.direction * ZOOM_RATE[motion.speed] * speed_factor) ** k
    return dx, dy, side


def render_clip(frames: np.ndarray, label: int | str, *, num_frames: int, size: int,
                rng: np.random.Generator, start: int | None = None, speed_factor: float | None = None,
                shake: float = 0.15, photometric: bool = True) -> np.ndarray:
    """One clip uint8 [num_frames, size, size, 3] of class `label` from source frames [T, H, W, 3]."""
    motion = Motion.of(CLASSES[label] if isinstance(label, (int, np.integer)) else label)
    frames = np.asarray(frames)
    factor = float(rng.uniform(0.8, 1.25)) if speed_factor is None else float(speed_factor)
    dx, dy, rel = _trajectory(motion, num_frames, size, factor)
    if start is None:
        start = int(rng.integers(0, max(len(frames) - num_frames, 0) + 1))
    clip = frames[(start + np.arange(num_frames)) % len(frames)]
    height, width = clip.shape[1:3]
    # z = source px per output px at frame 0: every window must fit, none may upsample more than 1/0.7.
    z_fit = 0.95 * min(width / (size * rel.max() + np.ptp(dx)), height / (size * rel.max() + np.ptp(dy)))
    z_min = 0.7 / rel.min()
    if z_fit < z_min:  # the source is too small for this motion: enlarge it
        grow = 1.01 * z_min / z_fit
        clip = np.stack([cv2.resize(f, (int(np.ceil(width * grow)), int(np.ceil(height * grow))),
                                    interpolation=cv2.INTER_LINEAR) for f in clip])
        z_fit *= clip.shape[2] / width
        height, width = clip.shape[1:3]
    z = float(rng.uniform(max(z_min, 0.35 * z_fit), max(z_fit, z_min)))
    shrink = 1.3 / (z * rel.min())
    if shrink < 1.0:  # shrink the source first so that warping never skips many source pixels
        new_size = (max(int(round(width * shrink)), 1), max(int(round(height * shrink)), 1))
        clip = np.stack([cv2.resize(f, new_size, interpolation=cv2.INTER_AREA) for f in clip])
        z *= new_size[0] / width
        height, width = clip.shape[1:3]
    sides = z * size * rel
    cx, cy = dx * z, dy * z
    lo_x, hi_x = -(cx - sides / 2).min(), width - (cx + sides / 2).max()
    lo_y, hi_y = -(cy - sides / 2).min(), height - (cy + sides / 2).max()
    cx = cx + rng.uniform(lo_x, max(hi_x, lo_x))
    cy = cy + rng.uniform(lo_y, max(hi_y, lo_y))
    jitter = rng.normal(0, shake * z, (num_frames, 2)) if shake else np.zeros((num_frames, 2))
    out = np.empty((num_frames, size, size, 3), np.uint8)
    for k in range(num_frames):
        scale = sides[k] / size
        x0 = cx[k] - sides[k] / 2 + jitter[k, 0]
        y0 = cy[k] - sides[k] / 2 + jitter[k, 1]
        # Inverse map: the centre of output pixel u lands at source x0 + (u + 0.5) * scale - 0.5.
        matrix = np.array([[scale, 0.0, x0 + 0.5 * scale - 0.5], [0.0, scale, y0 + 0.5 * scale - 0.5]])
        out[k] = cv2.warpAffine(clip[k], matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    if photometric:
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        out = np.clip((out.astype(np.float32) - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8)
    return out


def generate(count: int, *, sources: Sequence[np.ndarray], num_frames: int, size: int, seed: int | Sequence[int],
             labels: Sequence[int] | None = None, still_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """`count` clips and labels: (uint8 [count, num_frames, size, size, 3], int64 [count]).

    Labels are balanced (cycled through the classes, then shuffled) unless given. A `still_fraction` of
    the clips use one frame of their source as a still image (pure camera motion).
    """
    if not sources:
        raise DataError("generate() needs at least one source (video frames or textures)")
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.permutation(np.arange(count) % len(CLASSES))
    labels = np.asarray(labels, np.int64)
    clips = np.empty((count, num_frames, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        source = sources[int(rng.integers(0, len(sources)))]
        if len(source) > 1 and rng.random() < still_fraction:
            source = source[int(rng.integers(0, len(source)))][None]
        clips[i] = render_clip(source, int(label), num_frames=num_frames, size=size, rng=rng)
    return clips, labels


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0) -> Path:
    """Writes uint8 RGB frames [T, H, W, 3] as a full-chroma MJPEG .avi, or an MPEG-4 .mp4."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4" if path.suffix == ".mp4" else "mjpeg", rate=int(round(fps)))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p" if path.suffix == ".mp4" else "yuvj444p"  # full chroma: less colour loss
        if path.suffix == ".mp4":
            stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------ as a dataset
def _dataset_sources(options: Mapping, videos: str | None, split: str) -> list[np.ndarray]:
    """Source frames for a split: the videos (options' or the run's), else (or also) textures."""
    videos = options.get("videos") or videos
    min_resize = int(options.get("source_min_resize", 128))
    if videos and Path(videos).exists():
        sources = video_sources(videos, split=split, min_resize=min_resize)
    else:
        if videos:
            logging.warning("camera-motion source videos '%s' not found: using procedural textures", videos)
        sources = []
    if not sources or options.get("textures", 0):
        sources = sources + texture_sources(int(options.get("textures", 0) or 8), seed=1 if split == "train" else 2)
    return sources


def camera_motion_source(options: Mapping, *, num_frames: int, size: int, name: str = "camera_motion",
                         videos: str | None = None):
    """A `mtv.data.sources.Source` of freshly generated clips: batch `s` is rendered from `(seed, s)`."""
    import tensorflow as tf

    from mtv.data.sources import PipelineShare, Source, normalize_frames, one_hot, step_dataset

    options = dict(options or {})
    sources = _dataset_sources(options, videos, split="train")
    still = float(options.get("still_fraction", 0.3))

    def make(batch_size: int, start_step: int, seed: int,
             input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        share = PipelineShare.of(batch_size, input_context)
        rows = slice(share.start, share.stop)

        def batch_at(step: int):
            # One generator draws the whole batch in sequence, so each pipeline renders it all and keeps its rows.
            clips, labels = generate(batch_size, sources=sources, num_frames=num_frames, size=size,
                                     seed=[seed, step], still_fraction=still)
            return normalize_frames(clips[rows]), {"label": one_hot(labels[rows], len(CLASSES))}

        local = share.stop - share.start
        sig = (tf.TensorSpec((local, num_frames, size, size, 3), tf.float32),
               {"label": tf.TensorSpec((local, len(CLASSES)), tf.float32)})
        ds = step_dataset(batch_at, sig, start_step)
        return ds if input_context is None else share.split(ds)

    return Source(name, {"label": len(CLASSES)}, int(options.get("num_train", 6500)), make)


def camera_motion_eval(options: Mapping, *, num_frames: int, size: int, videos: str | None = None,
                       count: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out generated clips (uint8) and int labels, from the held-out source video."""
    options = dict(options or {})
    sources = _dataset_sources(options, videos, split="heldout")
    count = int(count or options.get("num_eval", 390))
    seed = int(options.get("eval_seed", 12345) if seed is None else seed)
    return generate(count, sources=sources, num_frames=num_frames, size=size, seed=seed,
                    still_fraction=float(options.get("still_fraction", 0.3)))


@register_dataset("camera_motion", num_classes=len(CLASSES))
def build_camera_motion(request: DatasetRequest) -> DataSpec:
    """The generated camera-motion dataset at the config's `num_frames` x `crop_size`."""
    dc = request.dataset_configs
    num_frames, size = int(dc.get("num_frames", 32)), int(dc.get("crop_size", 224))
    options = dc.get("synthetic") or {}
    source = camera_motion_source(options, num_frames=num_frames, size=size, name=request.name,
                                  videos=request.videos)
    clips, labels = camera_motion_eval(options, num_frames=num_frames, size=size, videos=request.videos)
    return DataSpec(request.name, source, eval_arrays=(clips, {"label": labels}), class_names=class_names(),
                    held_out="generated clips rendered from a video never used in training")
