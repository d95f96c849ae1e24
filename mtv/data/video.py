"""Decode a video file (PyAV) or a directory of frames into RGB uint8 frames plus mono audio.

Frames come out upright (the display matrix, or an old-style `rotate` tag, is applied) and in
presentation order, one entry per decoded frame, so a variable-frame-rate video keeps every frame.
The audio track, when there is one, is mixed down to mono float32 and cut or zero-padded to span
exactly the decoded frames: sample `round(i / fps * sample_rate)` is the time of frame `i`.
`Video.audio_span` says which part of that came from the track (the rest is zero padding).

A `frame_range` or `time_range` seeks, then numbers frames by presentation time from the stream's
first frame, `round((t - t_first) * fps)`, so a range read gives the same frames as slicing a full
decode of a constant-frame-rate video.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
from absl import logging

from mtv.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Video:
    """Decoded frames (uint8 [T, H, W, 3] RGB) with their frame rate and optional mono audio."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    path: str | None = None
    # Seconds after the first frame covered by the real audio track, within [0, duration]; the rest
    # of `audio` is zero padding. None without audio.
    audio_span: tuple[float, float] | None = None

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds, T / fps."""
        return self.num_frames / self.fps


def resized_shape(height: int, width: int, min_resize: int) -> tuple[int, int]:
    """(height, width) after resizing the smaller side to `min_resize` (DMVR's integer rule)."""
    return max(min_resize, height * min_resize // width), max(min_resize, width * min_resize // height)


def _shrink(frame: np.ndarray, min_resize: int | None) -> np.ndarray:
    """Downscales a frame so its smaller side is `min_resize`; never upscales."""
    h, w = frame.shape[:2]
    if not min_resize or min(h, w) <= min_resize:
        return frame
    out_h, out_w = resized_shape(h, w, min_resize)
    return cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _rotation_turns(stream, frame) -> int:
    """Counter-clockwise quarter turns that make `frame` upright."""
    degrees = frame.rotation  # display matrix, counter-clockwise
    if not degrees:
        tag = stream.metadata.get("rotate")  # older muxers: clockwise degrees
        if tag and tag.lstrip("-").isdigit():
            degrees = -int(tag)
    return int(round(degrees / 90.0)) % 4


# Frames past the end of a range still decoded, so a frame that a reordering container (e.g. AVI with
# packed B-frames) hands out late is not lost.
REORDER_WINDOW = 8
# Slack for float timestamps such as 49.15 s * 60 fps = 2948.9999...
_TIME_EPS = 1e-6


def frames_for_time_range(time_range: tuple[float, float], fps: float) -> tuple[int, int]:
    """0-based, half-open frame range `(start, stop)` of the frames a `(t0, t1)` seconds span overlaps.

    Frame `i` shows from `i / fps` to `(i + 1) / fps`; at least one frame.
    """
    t0, t1 = time_range
    if t0 < 0 or t1 <= t0:
        raise DataError(f"time range {time_range} must be (t0, t1) seconds with 0 <= t0 < t1")
    start = int(np.floor(t0 * fps + _TIME_EPS))
    return start, max(int(np.ceil(t1 * fps - _TIME_EPS)), start + 1)


def _frame_rate(stream, times: list[float]) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate and float(rate) > 0:
        return float(rate)
    if len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return 30.0


def _fit_audio(chunks: list[np.ndarray], lead: float, rate: int, duration: float) -> np.ndarray:
    """Joins audio chunks starting `lead` s after frame 0 into a track of exactly `duration` s."""
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    shift = int(round(lead * rate))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    n = int(round(duration * rate))
    if audio.shape[0] < n:
        audio = np.concatenate([audio, np.zeros(n - audio.shape[0], np.float32)])
    return np.ascontiguousarray(audio[:n], dtype=np.float32)


# FFmpeg demuxers and codecs that turn text or raw bytes into "video" (a .txt file opens as 'tty' with
# the 'ansi' codec and decodes into frames of rendered characters): not video, refused.
TEXT_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf", "ansi"})
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf", "text"})


def check_video_source(path: str | Path, demuxer: str, codec: str) -> None:
    """Refuses a file FFmpeg opened with a text demuxer or codec (not a video) with a DataError naming it."""
    demuxers = set((demuxer or "").split(","))
    if demuxers & TEXT_DEMUXERS or (codec or "") in TEXT_CODECS:
        raise DataError(f"'{path}' is not a video: FFmpeg reads it as text (demuxer '{demuxer}', codec "
                        f"'{codec}'); give a video file (mp4, avi, mkv, webm, mov) or a directory of frames")


def read_video(
    path: str | Path,
    *,
    max_frames: int | None = None,
    frame_range: tuple[int, int] | None = None,
    min_resize: int | None = None,
    with_audio: bool = True,
    audio_sample_rate: int | None = None,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    time_range: tuple[float, float] | None = None,
) -> Video:
    """Decodes a video file into upright RGB frames and, if present, its mono audio.

    Args:
      path: an mp4 / avi / mkv / webm (anything FFmpeg reads).
      max_frames: stop after this many frames.
      frame_range: `(start, stop)`, 0-based, half open: only frames `start <= i < stop` (seeks first).
      min_resize: downscale frames whose smaller side is larger than this (never upscales).
      with_audio: decode the first audio stream too.
      audio_sample_rate: resample audio to this rate (default: the stream's own rate).
      frame_transform: applied to each upright frame as it is decoded (e.g. the preprocessor's resize).
      time_range: `(t0, t1)` seconds from the first frame instead of `frame_range`: the frames that
        span overlaps at the stream's frame rate (`frames_for_time_range`).
    """
    path = Path(path)
    if time_range is not None and frame_range is not None:
        raise DataError(f"read_video('{path}'): give frame_range or time_range, not both")
    if not path.exists():
        raise DataError(f"video file '{path}' does not exist")
    if path.is_dir():
        raise DataError(f"'{path}' is a directory; use read_frames_dir for a directory of frames")
    if frame_range is not None:
        start, stop = frame_range
        if start < 0 or stop <= start:
            raise DataError(f"frame_range {frame_range} for '{path}' must be (start, stop) with 0 <= start < stop")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot open '{path}' as a video: {e}") from e
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise DataError(f"'{path}' has no video stream (streams found: {kinds})")
        vstream = container.streams.video[0]
        check_video_source(path, container.format.name, vstream.codec_context.name)
        vstream.thread_type = "AUTO"
        if time_range is not None:
            try:
                frame_range = frames_for_time_range(time_range, _frame_rate(vstream, []))
            except DataError as e:
                raise DataError(f"'{path}': {e}") from None
        start, stop = frame_range if frame_range is not None else (0, None)
        if max_frames is not None:
            stop = start + max_frames if stop is None else min(stop, start + max_frames)
        astream = container.streams.audio[0] if with_audio and container.streams.audio else None
        return _decode(path, container, vstream, astream, start, stop, min_resize, audio_sample_rate,
                       frame_transform)


def _decode(path, container, vstream, astream, start, stop, min_resize, audio_sample_rate,
            frame_transform=None) -> Video:
    frames: list[np.ndarray] = []
    times: list[float] = []
    audio_chunks: list[np.ndarray] = []
    audio_start: float | None = None
    audio_end = 0.0
    rate = int(audio_sample_rate or (astream.rate if astream is not None else 0)) or None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate) if astream is not None else None
    fps_guess = _frame_rate(vstream, [])
    base = 0.0
    if start > 0:
        # Frame 0 is the first frame decoded, whose time can differ from the stream's start_time.
        base = _first_frame_time(container, vstream)
        container.seek(int((base + start / fps_guess) / vstream.time_base), stream=vstream, backward=True)
    turns = None
    video_done = False
    count = 0
    streams = [vstream] + ([astream] if astream is not None else [])
    try:
        for packet in container.demux(*streams):
            if packet.stream.type == "video":
                if video_done:
                    continue
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else count / fps_guess
                    index = int(round((t - base) * fps_guess)) if start > 0 else count
                    count += 1
                    if index < start:
                        continue
                    if stop is not None and index >= stop:
                        video_done = index >= stop + (REORDER_WINDOW if start > 0 else 0)
                        if video_done:
                            break
                        continue
                    if turns is None:
                        turns = _rotation_turns(vstream, frame)
                    image = _shrink(frame.to_ndarray(format="rgb24"), min_resize)
                    image = np.rot90(image, turns) if turns else image
                    frames.append(frame_transform(image) if frame_transform is not None else image)
                    times.append(t)
            else:
                for frame in packet.decode():
                    if audio_start is None and frame.time is not None:
                        audio_start = float(frame.time)
                    for out in resampler.resample(frame):
                        audio_chunks.append(out.to_ndarray().reshape(-1))
                    if frame.time is not None:
                        audio_end = float(frame.time) + frame.samples / frame.sample_rate
            if video_done and (astream is None or (times and audio_end >= min(times) + len(times) / fps_guess)):
                break
    except av.FFmpegError as e:
        if not frames:
            raise DataError(f"cannot decode '{path}': {e}") from e
        logging.warning("'%s': decoding stopped after %d frames: %s", path, len(frames), e)
    if not frames:
        what = f"in frame range {start}..{stop}" if start or stop is not None else "at all"
        raise DataError(f"'{path}' has a video stream but no frame could be decoded {what}")
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        order = np.argsort(np.asarray(times), kind="stable")  # container order is not display order
        frames = [frames[i] for i in order]
        times = [times[i] for i in order]
    fps = _frame_rate(vstream, times)
    video = Video(frames=np.ascontiguousarray(np.stack(frames)), fps=fps, path=str(path))
    if resampler is not None:
        audio_chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        lead = (audio_start or 0.0) - times[0]
        video.audio = _fit_audio(audio_chunks, lead, rate, len(frames) / fps)
        video.sample_rate = rate
        real = sum(c.shape[0] for c in audio_chunks) / rate
        video.audio_span = (min(max(lead, 0.0), video.duration), max(min(lead + real, video.duration), 0.0))
    return video


def _first_frame_time(container, vstream) -> float:
    """Presentation time of the first frame the stream decodes to (0.0 if it has none)."""
    for packet in container.demux(vstream):
        for frame in packet.decode():
            return float(frame.time) if frame.time is not None else 0.0
    return 0.0


def natural_key(name: str) -> list:
    """Sort key putting 'frame_2' before 'frame_10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(path: str | Path) -> list[Path]:
    """The jpg/png files of a directory in natural order."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"frames directory '{path}' does not exist")
    files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DataError(f"frames directory '{path}' has no {'/'.join(IMAGE_SUFFIXES)} files")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Reads one image file (RGB for colour), raising DataError if it is not a readable image."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image '{path}': {e}") from e
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DataError(f"'{path}' is not a readable JPEG/PNG image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def read_frames_dir(
    path: str | Path,
    *,
    fps: float = 30.0,
    max_frames: int | None = None,
    frame_range: tuple[int, int] | None = None,
    min_resize: int | None = None,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Video:
    """Reads a directory of jpg/png frames, naturally sorted, as a Video at `fps` (no audio).

    `frame_range` is `(start, stop)`, 0-based and half open, over the sorted files; for Epic-Kitchens
    frames (`frame_0000000001.jpg` is frame 1) 1-based inclusive `[s, e]` is `(s - 1, e)`.
    `frame_transform` is applied to each frame as it is read (e.g. the preprocessor's resize).
    """
    files = list_frame_files(path)
    start, stop = frame_range if frame_range is not None else (0, len(files))
    files = files[start:stop]
    if max_frames is not None:
        files = files[:max_frames]
    if not files:
        raise DataError(f"frames directory '{path}' has no frames in range {frame_range}")
    transform = frame_transform or (lambda image: image)
    frames = [transform(_shrink(read_image(f), min_resize)) for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DataError(f"frames in '{path}' have different sizes: {sorted(shapes)}")
    return Video(frames=np.stack(frames), fps=float(fps), path=str(path))


def load_video(path: str | Path, **kwargs) -> Video:
    """`read_frames_dir` for a directory, `read_video` for a file (kwargs go to either)."""
    path = Path(path)
    if path.is_dir():
        kwargs.pop("with_audio", None)
        kwargs.pop("audio_sample_rate", None)
        return read_frames_dir(path, **kwargs)
    return read_video(path, **kwargs)
