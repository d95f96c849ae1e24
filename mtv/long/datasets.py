"""Untrimmed-video datasets for `mtv train` of a localizer, and the sequences of windows it trains on.

Two registered datasets (config.dataset_name), both giving an `UntrimmedData` as their DataSpec's source:

- `camera_motion_untrimmed`: videos from `mtv.data.untrimmed.untrimmed_set` with the fields of
  `dataset_configs.synthetic.untrimmed`; training from `split='train'`, held-out from `split='heldout'`
  (footage never used in training). Source videos: `--videos` or `dataset_configs.synthetic.videos`.
- `untrimmed_csv`: the user's own videos with `dataset_configs.untrimmed_csv.train` / `.eval` annotation CSVs,
  either `video,start,end,label` (seconds) or Epic-style rows (`video_id,start_timestamp,stop_timestamp` and
  `label` or `verb_class`/`noun_class`, per `.label_column`); the videos lie beside the CSV. Frames are
  read at `.fps`, resized (smaller side `crop_size`) and centre-cropped to `crop_size` squared.

A training example is a sequence of `windows_per_sequence` consecutive windows of `num_frames` frames cut
at a random frame of one training video, with `build_targets` targets of the segments clipped to it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mtv.data.datasets import DatasetRequest, DataSpec, register_dataset
from mtv.data.untrimmed import Segment, UntrimmedVideo, check_segment
from mtv.errors import ConfigError, DataError


@dataclasses.dataclass
class UntrimmedData:
    """Training and held-out untrimmed videos with their class names (a localization DataSpec's source)."""

    train: list[UntrimmedVideo]
    heldout: list[UntrimmedVideo]
    class_names: list[str]
    held_out: str = "held-out untrimmed videos"

    @property
    def classes(self) -> dict[str, int]:
        """{'label': number of classes}, as a classification Source reports it."""
        return {"label": len(self.class_names)}

    def __len__(self) -> int:
        return len(self.train)


@dataclasses.dataclass(frozen=True)
class SequenceGeometry:
    """How a localizer sees a video: windows of `window_frames` at `fps`, `steps_per_window` steps each."""

    window_frames: int
    steps_per_window: int
    windows_per_sequence: int
    fps: float
    num_levels: int
    regression_ranges: tuple | None = None

    @property
    def step_seconds(self) -> float:
        """Seconds per base step."""
        return self.window_frames / self.fps / self.steps_per_window

    @property
    def sequence_frames(self) -> int:
        """Frames in one training sequence."""
        return self.window_frames * self.windows_per_sequence


def clip_segments(segments: Sequence[Segment], start: float, end: float) -> list[tuple[float, float, str]]:
    """The parts of `segments` inside [start, end), shifted to start at 0 (empty overlaps dropped)."""
    out = []
    for s in segments:
        a, b = max(s.start, start) - start, min(s.end, end) - start
        if b - a > 1e-6:
            out.append((a, b, s.label))
    return out


def random_span(videos: Sequence[UntrimmedVideo], length: int, rng: np.random.Generator,
                too_short: str) -> tuple[UntrimmedVideo, int]:
    """A random video and a random first frame of `length` frames in it; `too_short` ends the error's sentence."""
    video = videos[int(rng.integers(len(videos)))]
    if len(video.frames) < length:
        raise DataError(f"video '{video.name}' has {len(video.frames)} frames; {too_short}")
    return video, int(rng.integers(len(video.frames) - length + 1))


def sample_sequences(videos: Sequence[UntrimmedVideo], geometry: SequenceGeometry, class_names: Sequence[str],
                     batch: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A batch of (windows float32 [B, W, T, H, W, 3] in [-1, 1], stacked `build_targets` targets)."""
    from mtv.data.sources import normalize_frames
    from mtv.long.localization import build_targets

    length = geometry.sequence_frames
    xs, ys = [], []
    for _ in range(batch):
        video, first = random_span(videos, length, rng, f"a training sequence needs {length} "
                                   f"({geometry.windows_per_sequence} windows of {geometry.window_frames})")
        frames = video.frames[first:first + length]
        xs.append(frames.reshape(geometry.windows_per_sequence, geometry.window_frames, *frames.shape[1:]))
        seconds = length / video.fps
        segments = clip_segments(video.segments, first / video.fps, first / video.fps + seconds)
        ys.append(build_targets(segments, num_steps=geometry.windows_per_sequence * geometry.steps_per_window,
                                step_seconds=geometry.step_seconds, num_levels=geometry.num_levels,
                                class_names=class_names, regression_ranges=geometry.regression_ranges,
                                duration=seconds))
    return normalize_frames(np.stack(xs)), {k: np.stack([y[k] for y in ys]) for k in ys[0]}


# ----------------------------------------------------------------------------------- camera motion
def _untrimmed_settings(dataset_configs: Mapping) -> dict:
    settings = dict((dataset_configs.get("synthetic") or {}).get("untrimmed") or {})
    known = {"fps", "video_seconds", "min_segment_seconds", "max_segment_seconds", "num_train_videos",
             "num_eval_videos", "size", "seed"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) dataset_configs.synthetic.untrimmed.{unknown[0]}; known: {sorted(known)}")
    return settings


@register_dataset("camera_motion_untrimmed", num_classes=13)
def build_camera_motion_untrimmed(request: DatasetRequest) -> DataSpec:
    """Untrimmed camera-motion videos from the real clips: training from split 'train', held-out from 'heldout'."""
    from mtv.data.synthetic import CLASSES
    from mtv.data.untrimmed import untrimmed_set

    dc = request.dataset_configs
    s = _untrimmed_settings(dc)
    videos = request.videos or (dc.get("synthetic") or {}).get("videos")
    if not videos:
        raise ConfigError("camera_motion_untrimmed renders from real videos: pass --videos=DIR (e.g. "
                          "/work/shared/data/videos) or set dataset_configs.synthetic.videos")
    size, crop = int(s.get("size", 32)), int(dc.get("crop_size", 32))
    if size != crop:
        raise ConfigError(f"dataset_configs.synthetic.untrimmed.size is {size} but dataset_configs.crop_size is "
                          f"{crop}; the localizer's windows must be crop_size x crop_size")
    common = dict(seconds=float(s.get("video_seconds", 32.0)), fps=float(s.get("fps", 8.0)), size=size,
                  min_segment_seconds=float(s.get("min_segment_seconds", 2.0)),
                  max_segment_seconds=float(s.get("max_segment_seconds", 8.0)),
                  source_min_resize=int((dc.get("synthetic") or {}).get("source_min_resize", 96)))
    seed = int(s.get("seed", 0))
    train = untrimmed_set(videos, count=int(s.get("num_train_videos", 64)), split="train", seed=seed, **common)
    heldout = untrimmed_set(videos, count=int(s.get("num_eval_videos", 8)), split="heldout", seed=seed + 1,
                            **common)
    data = UntrimmedData(train, heldout, list(CLASSES),
                         held_out=f"{len(heldout)} untrimmed videos rendered from the held-out footage")
    return DataSpec(request.name, data, class_names=list(CLASSES), held_out=data.held_out)


# ------------------------------------------------------------------------------------- CSV / Epic
EPIC_FIELDS = ("video_id", "start_timestamp", "stop_timestamp")


def read_segment_csv(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                     durations: Mapping[str, float] | None = None, label_column: str = "label",
                     video_suffix: str = ".mp4") -> tuple[dict[str, list[Segment]], list[str]]:
    """(video file name -> segments, class names) of a `video,start,end,label` or Epic-style CSV.

    Epic rows name the video by `video_id` (the file is `video_id + video_suffix` beside the CSV) and time
    by `start_timestamp`/`stop_timestamp` (HH:MM:SS.ff); the label is `label_column` (e.g. `verb_class`).
    Without `class_names` the classes are the sorted distinct labels. Errors name the file and line.
    """
    from mtv.data.prepare import parse_timestamp
    from mtv.data.untrimmed import read_annotations, video_duration

    path = Path(path)
    epic, column, rows, labels = _csv_rows(path, label_column)
    names = list(class_names) if class_names is not None else labels
    if not epic:
        return read_annotations(path, class_names=names, durations=durations), names
    known = dict(durations or {})
    out: dict[str, list[Segment]] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        video = (row.get("video_id") or "").strip() + video_suffix
        times = []
        for field in ("start_timestamp", "stop_timestamp"):
            try:
                times.append(parse_timestamp(row.get(field) or ""))
            except ValueError:
                raise DataError(f"{where}: column '{field}' must be a time HH:MM:SS.ff, "
                                f"got {row.get(field)!r}") from None
        if video not in known:
            file = path.parent / video
            if not file.is_file():
                raise DataError(f"{where}: video '{video}' not found beside the CSV ({file})")
            known[video] = video_duration(file)
        label = (row.get(column) or "").strip()
        out.setdefault(video, []).append(check_segment((times[0], times[1], label), duration=known[video],
                                                       class_names=names, where=f"{where} (video '{video}')"))
    if not out:
        raise DataError(f"{path}: no annotation rows")
    return out, names


def _csv_rows(path: Path, label_column: str) -> tuple[bool, str, list[dict], list[str]]:
    """(Epic-style?, the label column, the rows, the sorted distinct labels) of an annotation CSV."""
    from mtv.data.untrimmed import CSV_FIELDS

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the annotation CSV '{path}': {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    epic = all(f in header for f in EPIC_FIELDS)
    if not epic and not all(f in header for f in CSV_FIELDS):
        raise DataError(f"{path}: the header must hold {','.join(CSV_FIELDS)} or Epic's {','.join(EPIC_FIELDS)} and "
                        f"a label column; got {header}")
    column = label_column if epic else "label"
    if column not in header:
        raise DataError(f"{path}: no label column '{column}' in the header {header}")
    rows = list(reader)
    return epic, column, rows, sorted({(r.get(column) or "").strip() for r in rows} - {""})


def read_frames_for_localization(path: str | os.PathLike, *, fps: float, size: int,
                                 frame_range: tuple[int, int] | None = None) -> tuple[np.ndarray, float, int]:
    """(uint8 frames [T, size, size, 3] at about `fps`, the rate they have, the source frame stride)."""
    from mtv.data.video import read_video

    stride, rate = frame_stride(path, fps)
    video = read_video(path, frame_range=frame_range, with_audio=False, frame_transform=lambda f: square(f, size))
    return np.asarray(video.frames)[::stride], rate / stride, stride


def frame_stride(path: str | os.PathLike, fps: float) -> tuple[int, float]:
    """(source frames per model frame, the source frame rate) so that frames come at about `fps`."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot open the video '{path}': {e}") from None
    if rate <= 0:
        raise DataError(f"video '{path}' reports no frame rate")
    return max(1, round(rate / fps)), rate


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """The centre square of a frame resized to size x size (the localizer's window frames)."""
    import cv2

    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(np.ascontiguousarray(frame[top:top + side, left:left + side]), (size, size),
                      interpolation=cv2.INTER_AREA)


def load_csv_videos(csv_path: str | os.PathLike, *, fps: float, size: int, class_names: Sequence[str] | None,
                    label_column: str = "label", video_suffix: str = ".mp4"
                    ) -> tuple[list[UntrimmedVideo], list[str]]:
    """The annotated videos of a CSV, decoded at about `fps` and `size` squared, with the class names."""
    annotations, names = read_segment_csv(csv_path, class_names=class_names, label_column=label_column,
                                          video_suffix=video_suffix)
    videos = []
    for name, segments in annotations.items():
        frames, rate, _ = read_frames_for_localization(Path(csv_path).parent / name, fps=fps, size=size)
        videos.append(UntrimmedVideo(name, frames, rate, segments))
    return videos, names


@register_dataset("untrimmed_csv", classes=lambda request: {"label": len(_csv_class_names(request))})
def build_untrimmed_csv(request: DatasetRequest) -> DataSpec:
    """The user's untrimmed videos from annotation CSVs (`dataset_configs.untrimmed_csv.train` / `.eval`)."""
    section, names = _csv_section(request), _csv_class_names(request)
    dc = request.dataset_configs
    fps, size = float(section.get("fps", 8.0)), int(dc.get("crop_size", 32))
    read = dict(fps=fps, size=size, class_names=names, label_column=section.get("label_column", "label"),
                video_suffix=section.get("video_suffix", ".mp4"))
    train, _ = load_csv_videos(section["train"], **read)
    heldout = load_csv_videos(section["eval"], **read)[0] if section.get("eval") else []
    data = UntrimmedData(train, heldout, names, held_out=f"the videos of {section.get('eval')}")
    return DataSpec(request.name, data, class_names=names, held_out=data.held_out)


def _csv_section(request: DatasetRequest) -> dict:
    section = dict(request.dataset_configs.get("untrimmed_csv") or {})
    if not section.get("train"):
        raise ConfigError("dataset 'untrimmed_csv' needs dataset_configs.untrimmed_csv.train (an annotation CSV "
                          "with the videos beside it)")
    return section


def _csv_class_names(request: DatasetRequest) -> list[str]:
    section = _csv_section(request)
    if section.get("class_names"):
        return [str(c) for c in section["class_names"]]
    return _csv_rows(Path(section["train"]), section.get("label_column", "label"))[3]
