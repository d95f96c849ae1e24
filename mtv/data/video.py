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


# ------------------------------------------------------------------------------------ seek-based reads
# Needed frames closer than this many seconds are decoded in one pass: decoding through a short gap costs less
# than a seek back to the previous keyframe (typically 1-10 s away) and decoding forward from there.
MERGE_GAP_SECONDS = 1.0
# Audio decoded before a span's first sample after a seek: enough for the decoder (AAC/MP3/Opus overlap, MP3's
# bit reservoir) and the resampler's filter to settle, so the span's samples are those of a whole-track decode.
AUDIO_PREROLL_SECONDS = 0.5
# A frame count that disagrees with duration x frame rate by more than this many frames means a variable frame
# rate, where numbering frames by time (what seeking needs) and numbering them by count (a full decode) differ.
VFR_TOLERANCE_FRAMES = 1.5


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video file's container says, read without decoding it (`probe_video`)."""

    path: str
    num_frames: int
    fps: float
    first_time: float  # presentation time of the first frame: frame i is shown at first_time + i / fps
    counted: bool  # the container gave no frame count, so video packets were counted in a demux pass
    constant_rate: bool  # frame count, duration and frame rate agree: frames can be found by time
    audio_rate: int | None = None  # the audio track's own sample rate; None without one
    audio_span: tuple[float, float] | None = None  # as Video.audio_span: seconds after the first frame with sound

    @property
    def duration(self) -> float:
        """Length in seconds, num_frames / fps."""
        return self.num_frames / self.fps


def _open(path: Path):
    """Opens a video file for reading, refusing a missing file, a directory and a non-video."""
    if not path.exists():
        raise DataError(f"video file '{path}' does not exist")
    if path.is_dir():
        raise DataError(f"'{path}' is a directory; use read_frames_dir for a directory of frames")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot open '{path}' as a video: {e}") from e
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        container.close()
        raise DataError(f"'{path}' has no video stream (streams found: {kinds})")
    vstream = container.streams.video[0]
    try:
        check_video_source(path, container.format.name, vstream.codec_context.name)
    except DataError:
        container.close()
        raise
    return container, vstream


def _audio_extent(path: Path, container, astream) -> tuple[float, float] | None:
    """(start, end) presentation seconds of an audio track: its first decoded frame, and its last packets' end."""
    first = _audio_start(path)[0]
    end = None
    if container.duration:
        # Only the container's last seconds: the extent must cost the same for a 10-minute video as a 10-second one.
        target = max(container.duration / av.time_base - 5.0, 0.0)
        container.seek(int(target / astream.time_base), stream=astream, backward=True)
    for packet in container.demux(astream):
        if packet.pts is not None and packet.size:
            end = max(end or first, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return (first, end) if end is not None else None


def probe_video(path: str | Path, *, with_audio: bool = True) -> VideoInfo:
    """Frame count, frame rate and audio extent of a video file from its container, decoding one frame.

    A container without a frame count (Matroska, WebM) gets a counted demux pass (packets only, nothing
    decoded), logged; so does one whose count disagrees with its duration.
    """
    path = Path(path)
    container, vstream = _open(path)
    with container:
        fps = _frame_rate(vstream, [])
        first_time = _first_frame_time(container, vstream)
        num, counted = int(vstream.frames or 0), False
        if num <= 0:
            container.seek(0, stream=vstream, backward=True)
            num = sum(1 for packet in container.demux(vstream) if packet.size)
            counted = True
            logging.info("'%s': the container gives no frame count; counted %d video packets in a demux pass",
                         path, num)
        if num <= 0:
            raise DataError(f"'{path}' has a video stream but no frame could be decoded at all")
        constant = True
        if vstream.duration and vstream.time_base:
            expected = float(vstream.duration * vstream.time_base) * fps
            constant = abs(expected - num) <= VFR_TOLERANCE_FRAMES
        rate, span = None, None
        if with_audio and container.streams.audio:
            astream = container.streams.audio[0]
            rate = int(astream.rate or 0) or None
            extent = _audio_extent(path, container, astream)
            if extent is not None:
                duration = num / fps
                lead, end = extent[0] - first_time, extent[1] - first_time
                span = (min(max(lead, 0.0), duration), max(min(end, duration), 0.0))
            else:
                span = (0.0, 0.0)
    return VideoInfo(str(path), num, fps, first_time, counted, constant, rate, span)


def _merge_runs(indices: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Sorted unique frame indices -> half-open (start, stop) runs, joining indices at most `max_gap` apart."""
    runs: list[list[int]] = []
    for i in indices.tolist():
        if runs and i - runs[-1][1] < max_gap:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def read_frames_at(path: str | Path, indices, *, info: VideoInfo | None = None,
                   frame_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Only the frames `indices` of a video file, by seeking: {index: upright RGB frame}, transformed as decoded.

    Indices are those of a full decode (`read_video`): nearby indices are decoded in one run after one seek
    (`MERGE_GAP_SECONDS`); one open container serves every run. A video whose frames cannot be found by time
    (variable frame rate, `VideoInfo.constant_rate`) is decoded from the start instead, keeping only these.
    """
    path = Path(path)
    info = info or probe_video(path, with_audio=False)
    wanted = np.unique(np.asarray(indices, np.int64).reshape(-1))
    if wanted.size and (wanted[0] < 0 or wanted[-1] >= info.num_frames):
        raise DataError(f"frame indices {wanted[0]}..{wanted[-1]} of '{path}' are outside its "
                        f"{info.num_frames} frames")
    if not info.constant_rate:
        logging.info("'%s': variable frame rate (%d frames in %s s at %g fps); decoding from the start to find "
                     "frames by count, not by seeking", path, info.num_frames, info.duration, info.fps)
        return _frames_by_count(path, wanted, frame_transform)
    out: dict[int, np.ndarray] = {}
    container, vstream = _open(path)
    with container:
        vstream.thread_type = "AUTO"
        turns = None
        for start, stop in _merge_runs(wanted, max(int(MERGE_GAP_SECONDS * info.fps), 1)):
            # Aimed REORDER_WINDOW frames early: where packets carry decode-order times (AVI), the keyframe just
            # after a B-frame can sit before it in the file, and a seek to that keyframe would skip the B-frame.
            target = info.first_time + max(start - REORDER_WINDOW, 0) / info.fps
            container.seek(int(target / vstream.time_base), stream=vstream, backward=True)
            keep = set(wanted[(wanted >= start) & (wanted < stop)].tolist())
            count = 0
            try:
                for packet in container.demux(vstream):
                    done = False
                    for frame in packet.decode():
                        t = float(frame.time) if frame.time is not None else info.first_time + count / info.fps
                        count += 1
                        index = int(round((t - info.first_time) * info.fps))
                        # Frames past the run are still decoded for a while: a reordering container hands some out late.
                        if index >= stop + REORDER_WINDOW:
                            done = True
                            break
                        if index not in keep or index in out:
                            continue
                        if turns is None:
                            turns = _rotation_turns(vstream, frame)
                        image = frame.to_ndarray(format="rgb24")
                        image = np.rot90(image, turns) if turns else image
                        out[index] = frame_transform(image) if frame_transform is not None else image
                    if done or keep <= out.keys():
                        break
            except av.FFmpegError as e:
                logging.warning("'%s': decoding frames %d..%d stopped: %s", path, start, stop, e)
    missing = [int(i) for i in wanted if int(i) not in out]
    if missing:
        raise DataError(f"'{path}': frames {missing[:5]}{'...' if len(missing) > 5 else ''} of its "
                        f"{info.num_frames} could not be decoded by seeking (the container says "
                        f"{info.num_frames} frames at {info.fps:g} fps)")
    return out


def read_audio_span(path: str | Path, start: int, length: int, sample_rate: int, *,
                    info: VideoInfo | None = None) -> np.ndarray:
    """`length` mono float32 samples at `sample_rate` from sample `start` (0 = the first frame's time) of a video.

    The same samples as `read_video(path, audio_sample_rate=sample_rate).audio[start:start + length]`, zero
    where that track is padded (before the sound starts, after it ends, past the last frame), but only this
    span (plus `AUDIO_PREROLL_SECONDS`) is decoded, and it is resampled by PyAV's resampler.
    """
    path = Path(path)
    info = info or probe_video(path)
    out = np.zeros(length, np.float32)
    total = int(round(info.duration * sample_rate))  # the whole-track decode is cut to the frames' span
    stop = min(start + length, total)
    if info.audio_rate is None or stop <= start:
        return out
    container, _ = _open(path)
    with container:
        astream = container.streams.audio[0]
        t0 = info.first_time + start / sample_rate
        target = max(t0 - AUDIO_PREROLL_SECONDS, 0.0)
        if target > 0:
            track_start, first_size = _audio_start(path)
            container.seek(int(target / astream.time_base), stream=astream, backward=True)
        mono = av.AudioResampler(format="flt", layout="mono", rate=astream.rate)
        chunks, first, begun, frame_size = [], None, None, 0
        # The first frame after a seek into the track can come out trimmed (Opus drops its codec delay again)
        # with a timestamp that no longer says where its samples sit: it is pre-roll, so it is left out.
        drop = 1 if target > 0 else 0
        need = (stop - start) / sample_rate + AUDIO_PREROLL_SECONDS
        try:
            for packet in container.demux(astream):
                for frame in packet.decode():
                    if first is None:
                        if frame.time is None or drop:
                            drop = max(drop - 1, 0)
                            continue
                        first, frame_size = float(frame.time), frame.samples
                    chunks += [o.to_ndarray().reshape(-1) for o in mono.resample(frame)]
                    begun = frame.time if frame.time is not None else begun
                if begun is not None and float(begun) - t0 > need:
                    break
        except av.FFmpegError as e:
            logging.warning("'%s': decoding audio from %.3f s stopped: %s", path, t0 - info.first_time, e)
        chunks += [o.to_ndarray().reshape(-1) for o in mono.resample(None)]
        in_rate, tick = int(astream.rate), float(astream.time_base)
        if target <= 0:  # decoded from the top, as the whole track is: its first frame is the track's
            track_start, first_size = first, frame_size
    if first is None or not chunks:
        return out
    audio = np.concatenate(chunks)
    # A whole-track decode resamples from the track's first sample; starting this one on the same output grid
    # (a whole number of output samples after it) makes the resampled samples the same, not merely close.
    offset = int(round((first - track_start) * in_rate))
    if frame_size and first_size:
        # A coarse time base (Matroska: 1 ms) rounds a frame's time; with fixed-size codec frames after the
        # first, the frame can only start at first_size + k * frame_size samples, so take the nearest such start.
        snapped = first_size + frame_size * int(round((offset - first_size) / frame_size))
        offset = snapped if abs(snapped - offset) <= max(tick * in_rate, 1) else offset
    step = in_rate // np.gcd(in_rate, sample_rate)
    skip = (-offset) % step
    audio = audio[skip:]
    first_out = (offset + skip) * sample_rate // in_rate  # output index of the kept first sample, track-relative
    resampled = resample_mono(audio, in_rate, sample_rate)
    lead = int(round((track_start - info.first_time) * sample_rate))  # where the whole decode places sample 0
    begin = lead + first_out  # frame-relative index of resampled[0]
    lo, hi = max(start, begin, lead), min(stop, begin + resampled.shape[0])
    if hi > lo:
        out[lo - start:hi - start] = resampled[lo - begin:hi - begin]
    return out


def _audio_start(path: Path) -> tuple[float, int]:
    """(presentation time, samples) of the audio track's first decoded frame, as a whole-track decode sees it."""
    # A fresh container: after a seek, even to 0, a decoder can hand out the first frame differently (Opus).
    container, _ = _open(path)
    with container:
        return _first_audio_frame(container, container.streams.audio[0])


def _first_audio_frame(container, astream) -> tuple[float, int]:
    for packet in container.demux(astream):
        for frame in packet.decode():
            if frame.time is not None:
                return float(frame.time), int(frame.samples)
    return 0.0, 0


def resample_mono(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` -> `new_rate` with PyAV's resampler (libswresample), delay-compensated."""
    audio = np.ascontiguousarray(audio, np.float32)
    if rate == new_rate or audio.size == 0:
        return audio
    frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    resampler = av.AudioResampler(format="flt", layout="mono", rate=new_rate)
    chunks = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
    chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _frames_by_count(path: Path, wanted: np.ndarray, frame_transform) -> dict[int, np.ndarray]:
    """The frames `wanted`, numbered by count as a full decode numbers them: decoded from the start, only they kept."""
    keep = set(wanted.tolist())
    out: dict[int, np.ndarray] = {}
    container, vstream = _open(path)
    with container:
        vstream.thread_type = "AUTO"
        turns, last_time = None, None
        for index, frame in enumerate(container.decode(vstream)):
            if frame.time is not None:
                if last_time is not None and frame.time < last_time:
                    # Out of display order: a full decode sorts by time, which counting as we go cannot do.
                    video = read_video(path, with_audio=False, frame_transform=frame_transform)
                    return {i: video.frames[i] for i in keep if i < video.num_frames}
                last_time = frame.time
            if index in keep:
                turns = _rotation_turns(vstream, frame) if turns is None else turns
                image = frame.to_ndarray(format="rgb24")
                image = np.rot90(image, turns) if turns else image
                out[index] = frame_transform(image) if frame_transform is not None else image
            if index >= wanted[-1]:
                break
    return out


class VideoSource:
    """A video file or frames directory read on demand: only the frames (and audio spans) asked for are decoded.

    Frame indices are those of a full decode (`load_video`), so `gather(indices)` equals
    `load_video(path, frame_transform=...).frames[indices]`; a file is read by seeking (`read_frames_at`), a
    directory by reading only the needed files. `decoded` counts the frames handed out so far.
    """

    def __init__(self, path: str | Path, *, frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 with_audio: bool = False, fps: float = 30.0):
        self.path = Path(path)
        self.frame_transform = frame_transform
        self.decoded = 0
        if self.path.is_dir():
            self.files = list_frame_files(self.path)
            self.info = VideoInfo(str(self.path), len(self.files), float(fps), 0.0, False, True)
        else:
            self.files = None
            self.info = probe_video(self.path, with_audio=with_audio)

    @property
    def num_frames(self) -> int:
        """Frames in the whole video."""
        return self.info.num_frames

    @property
    def fps(self) -> float:
        """Frame rate."""
        return self.info.fps

    @property
    def duration(self) -> float:
        """Length in seconds, num_frames / fps."""
        return self.info.duration

    def frames_at(self, indices) -> dict[int, np.ndarray]:
        """{index: frame} for the distinct `indices`, transformed as decoded."""
        wanted = np.unique(np.asarray(indices, np.int64).reshape(-1))
        if self.files is None:
            got = read_frames_at(self.path, wanted, info=self.info, frame_transform=self.frame_transform)
        else:
            transform = self.frame_transform or (lambda image: image)
            got = {int(i): transform(read_image(self.files[i])) for i in wanted}
        self.decoded += len(got)
        return got

    def gather(self, indices) -> np.ndarray:
        """Frames at `indices` (any shape): uint8 [*indices.shape, H, W, 3]."""
        indices = np.asarray(indices, np.int64)
        got = self.frames_at(indices)
        shapes = {f.shape for f in got.values()}
        if len(shapes) > 1:
            raise DataError(f"frames in '{self.path}' have different sizes: {sorted(shapes)}")
        frames = np.stack([got[int(i)] for i in indices.reshape(-1)])
        return frames.reshape(*indices.shape, *frames.shape[1:])

    def audio(self, start: int, length: int, sample_rate: int) -> np.ndarray:
        """`length` mono samples at `sample_rate` from sample `start` (0 = the first frame): `read_audio_span`."""
        if self.files is not None:
            return np.zeros(length, np.float32)
        return read_audio_span(self.path, start, length, sample_rate, info=self.info)

    def audio_stand_in(self) -> Video:
        """A frameless `Video` with this source's length and audio extent, for the rule of `check_audio_covers`."""
        has_audio = self.info.audio_rate is not None
        return Video(np.empty((self.num_frames, 0, 0, 3), np.uint8), self.fps,
                     audio=np.zeros(0, np.float32) if has_audio else None,
                     sample_rate=self.info.audio_rate, path=str(self.path), audio_span=self.info.audio_span)
