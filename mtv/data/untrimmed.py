"""Untrimmed test videos from real footage: a sequence of camera-motion segments, with their annotations.

A video is one source video (its frames in order, so the scene runs on) filmed by a virtual camera that
changes its motion at random times: each segment has a random length in [min, max] seconds and a random
camera-motion class (`mtv.data.synthetic.CLASSES`: static, pans, tilts, zooms at two speeds), never the
same class twice in a row, rendered by `mtv.data.synthetic.render_clip` in pieces of at most
`MAX_PIECE_FRAMES` frames (a zoom cannot go on for long), each with a fresh window placement: every
boundary is a cut, but long segments have cuts inside too, so a cut alone does not mark a boundary. One
brightness/contrast change applies to the whole video. Segments tile the video: segment k covers frames
[f_k, f_{k+1}), i.e. [f_k / fps, f_{k+1} / fps) seconds, and a tail shorter than the minimum is merged
into the last segment. `split='heldout'` renders from the held-out source video only
(`mtv.data.synthetic.HELDOUT_VIDEO`, never used in training), 'train' from the others.

On disk: `<name>.avi` (MJPEG, full chroma) per video and one annotation CSV with the header
`video,start,end,label` (seconds, class names), each file written atomically. `read_annotations` reads
such a CSV back and refuses, by file, line and field, a start >= end, a segment outside its video, an
unknown label or a malformed row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mtv.data.synthetic import CLASSES, render_clip, video_sources
from mtv.errors import DataError
from mtv.utils.fileio import atomic_path, atomic_write_text, writing

CSV_FIELDS = ("video", "start", "end", "label")
VIDEO_SUFFIX = ".avi"
# Longest stretch rendered with one window trajectory: a zoom of 8 % per frame grows 3.4x in 16 frames
# but 137x in 64, more than any source frame allows.
MAX_PIECE_FRAMES = 16
# Annotation times are written with 6 decimals; a segment may end this far past the video's last frame.
TIME_TOLERANCE = 1e-4


class Segment(NamedTuple):
    """One annotated segment: [start, end) seconds and its class name."""

    start: float
    end: float
    label: str


@dataclasses.dataclass
class UntrimmedVideo:
    """Frames uint8 [T, H, W, 3] at `fps` with the segments that tile them."""

    name: str
    frames: np.ndarray
    fps: float
    segments: list[Segment]

    @property
    def duration(self) -> float:
        """Length in seconds, T / fps."""
        return len(self.frames) / self.fps


# ------------------------------------------------------------------------------------------ checks
def check_segment(segment, *, duration: float | None, class_names: Sequence[str] = CLASSES,
                  where: str = "segment") -> Segment:
    """`segment` (start, end, label) as a Segment, or a DataError naming `where` and what is wrong."""
    try:
        start, end, label = segment
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected (start, end, label), got {segment!r}") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise DataError(f"{where}: start {start} and end {end} must be finite seconds")
    if start >= end:
        raise DataError(f"{where}: start {start:g} s >= end {end:g} s; a segment needs start < end")
    if start < 0 or (duration is not None and end > duration + TIME_TOLERANCE):
        span = f"[0, {duration:g}] s" if duration is not None else "[0, ...) s"
        raise DataError(f"{where}: segment [{start:g}, {end:g}] s lies outside the video {span}")
    if label not in class_names:
        raise DataError(f"{where}: unknown label {label!r}; known labels: {', '.join(class_names)}")
    return Segment(start, end, str(label))


def check_segments(segments: Sequence, *, duration: float | None, class_names: Sequence[str] = CLASSES,
                   where: str = "segments") -> list[Segment]:
    """`segments` as Segments, or a DataError naming `where`, the segment's index and what is wrong."""
    return [check_segment(s, duration=duration, class_names=class_names, where=f"{where}[{i}]")
            for i, s in enumerate(segments)]


# --------------------------------------------------------------------------------------- generation
def _segment_lengths(total: int, low: int, high: int, rng: np.random.Generator) -> list[int]:
    lengths = []
    left = total
    while left > 0:
        length = min(int(rng.integers(low, high + 1)), left)
        if 0 < left - length < low:  # a tail too short to be a segment joins this one
            length = left
        lengths.append(length)
        left -= length
    return lengths


def generate_untrimmed(source: np.ndarray, *, name: str, seconds: float, fps: float, size: int,
                       seed: int | Sequence[int], min_segment_seconds: float = 2.0,
                       max_segment_seconds: float = 8.0, labels: Sequence[str] = CLASSES,
                       max_piece_frames: int = MAX_PIECE_FRAMES) -> UntrimmedVideo:
    """One untrimmed video of `seconds` at `fps` (size x size) from source frames [T, H, W, 3] (see the module)."""
    if max_piece_frames < 1:
        raise DataError(f"max_piece_frames must be >= 1, got {max_piece_frames}")
    low, high = round(min_segment_seconds * fps), round(max_segment_seconds * fps)
    total = round(seconds * fps)
    if not 1 <= low <= high:
        raise DataError(f"segment lengths [{min_segment_seconds}, {max_segment_seconds}] s at {fps} fps must be at "
                        "least one frame with min <= max")
    if total < low:
        raise DataError(f"a {seconds} s video is shorter than one segment ({min_segment_seconds} s)")
    unknown = [label for label in labels if label not in CLASSES]
    if unknown or len(set(labels)) < 2:
        raise DataError(f"labels must be at least two camera-motion classes ({', '.join(CLASSES)}); got {labels}")
    rng = np.random.default_rng(seed)
    position = int(rng.integers(0, len(source)))
    frames, segments, previous, frame = [], [], None, 0
    for length in _segment_lengths(total, low, high, rng):
        label = str(rng.choice([c for c in labels if c != previous]))
        for offset in range(0, length, max_piece_frames):
            piece = min(max_piece_frames, length - offset)
            frames.append(render_clip(source, label, num_frames=piece, size=size, rng=rng, start=position + offset,
                                      photometric=False))
        segments.append(Segment(frame / fps, (frame + length) / fps, label))
        position, frame, previous = position + length, frame + length, label
    video = np.concatenate(frames).astype(np.float32)
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    video = np.clip((video - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8)
    return UntrimmedVideo(name, video, float(fps), segments)


def untrimmed_set(videos: str | os.PathLike | Sequence, *, count: int, split: str = "heldout", seconds: float = 32.0,
                  fps: float = 8.0, size: int = 32, seed: int = 0, min_segment_seconds: float = 2.0,
                  max_segment_seconds: float = 8.0, source_min_resize: int = 96,
                  prefix: str | None = None) -> list[UntrimmedVideo]:
    """`count` untrimmed videos rendered from the real videos of one split (`video_sources`), video i from (seed, i)."""
    sources = video_sources(videos, split=split, min_resize=source_min_resize)
    prefix = prefix or f"untrimmed_{split}"
    return [generate_untrimmed(sources[i % len(sources)], name=f"{prefix}_{i:03d}", seconds=seconds, fps=fps,
                               size=size, seed=[seed, i], min_segment_seconds=min_segment_seconds,
                               max_segment_seconds=max_segment_seconds)
            for i in range(count)]


# ------------------------------------------------------------------------------------------- writing
def write_video_file(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Writes uint8 RGB frames [T, H, W, 3] as an MJPEG .avi at `fps`, atomically."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise DataError(f"frames for '{path}' must be non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    with writing(path), atomic_path(path) as tmp:
        # The temporary name ends in .tmp: name the container format explicitly.
        with av.open(str(tmp), "w", format="avi") as container:
            stream = container.add_stream("mjpeg", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuvj444p"
            stream.options = {"qmin": "1", "qmax": "2"}  # near-lossless: the default loses ~7 levels per pixel
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def annotations_csv(videos: Sequence[UntrimmedVideo]) -> str:
    """The annotation CSV text (`video,start,end,label`, one row per segment) of checked videos."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for video in videos:
        for segment in video.segments:
            writer.writerow([video.name + VIDEO_SUFFIX, f"{segment.start:.6f}", f"{segment.end:.6f}", segment.label])
    return buffer.getvalue()


def write_untrimmed(videos: Sequence[UntrimmedVideo], directory: str | os.PathLike, *,
                    csv_name: str = "annotations.csv") -> Path:
    """Writes each video as `<name>.avi` and then the annotation CSV into `directory`; returns the CSV path.

    Everything is checked before the first byte is written, and each file is written atomically.
    """
    directory = Path(directory)
    names = [v.name for v in videos]
    if len(set(names)) != len(names):
        raise DataError(f"video names must be unique, got {names}")
    for video in videos:
        check_segments(video.segments, duration=video.duration, where=f"video '{video.name}' segments")
    text = annotations_csv(videos)
    for video in videos:
        write_video_file(directory / f"{video.name}{VIDEO_SUFFIX}", video.frames, video.fps)
    csv_path = directory / csv_name
    with writing(csv_path):
        atomic_write_text(csv_path, text)
    return csv_path


# ------------------------------------------------------------------------------------------- reading
def video_duration(path: str | os.PathLike) -> float:
    """A video file's length in seconds (frames / frame rate, from PyAV); DataError when unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot read the video '{path}' to check its annotations: {e}") from None
    if rate <= 0 or frames <= 0:
        raise DataError(f"video '{path}' reports no frames or no frame rate")
    return frames / rate


def read_annotations(path: str | os.PathLike, *, class_names: Sequence[str] = CLASSES,
                     durations: Mapping[str, float] | None = None) -> dict[str, list[Segment]]:
    """Video -> its checked segments, from a `video,start,end,label` CSV.

    A segment must lie inside its video: the video's length comes from `durations` (keyed by the `video`
    column) or else from the video file of that name beside the CSV. Errors name the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the annotation CSV '{path}': {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [f for f in CSV_FIELDS if f not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: the header must hold {','.join(CSV_FIELDS)}; missing {', '.join(missing)} "
                        f"(got {reader.fieldnames})")
    out: dict[str, list[Segment]] = {}
    known: dict[str, float] = dict(durations or {})
    for row in reader:
        where = f"{path}:{reader.line_num}"
        video = (row.get("video") or "").strip()
        if not video:
            raise DataError(f"{where}: empty 'video' field")
        values = {}
        for field in ("start", "end"):
            try:
                values[field] = float(row.get(field) or "")
            except ValueError:
                raise DataError(f"{where}: field '{field}' is {row.get(field)!r}, not a number of seconds") from None
        if video not in known:
            file = path.parent / video
            if not file.is_file():
                raise DataError(f"{where}: video '{video}' not found beside the CSV ({file}) and no duration given "
                                "for it; cannot check that its segments lie inside it")
            known[video] = video_duration(file)
        segment = check_segment((values["start"], values["end"], row.get("label")), duration=known[video],
                                class_names=class_names, where=f"{where} (video '{video}')")
        out.setdefault(video, []).append(segment)
    if not out:
        raise DataError(f"{path}: no annotation rows")
    return out
