"""Turn a CSV of videos and labels into sharded TFRecords (the `mtv data prepare` command).

Two CSV layouts, told apart by their header:

* `path,label` (optional `id`, `label_name`): `path` is a video file or a directory of frames,
  relative to `video_root` (default: the CSV's folder); `label` is an integer class, written to
  `clip/label/index`.
* Epic-Kitchens: `narration_id,video_id` and the segment as `start_timestamp,stop_timestamp`
  (`HH:MM:SS.ff`), as `start_frame,stop_frame` (1-based, inclusive), or both; plus
  `verb_class,noun_class` (both, or neither for the unlabelled test split; `verb`/`noun` text columns
  are kept if present). The segment of `video_id` comes from the first of `<root>/<video_id>.<ext>`,
  `<root>/<P>/videos/<video_id>.<ext>`, `<root>/<video_id>/` (frames) or
  `<root>/<P>/rgb_frames/<video_id>/`, where `<P>` is the participant (`P01` of `P01_11`). Labels go
  to `clip/label/verb/index` and `clip/label/noun/index`.

Which columns find the frames: from a video file, the timestamps (the frames the span overlaps at the
video's own frame rate), because they are exact whatever rate the file was encoded at, while Epic's
frame numbers count the released 50/60 fps frames; from a frames directory (the released frames),
the frame numbers, or the timestamps at `frames_fps` when the CSV has none.

Per segment, with `with_audio` the audio of the segment's own time span is stored (mono, 16 kHz,
sample 0 at the first frame); with `with_flow` optical flow between its frames, from Epic's
`<root>/<P>/flow_frames/<video_id>/{u,v}/` TV-L1 JPEGs when that folder exists, else computed
(Farnebäck; `flow_source` forces either). A segment that cannot be stored whole is skipped, never
stored with zeros or a shorter span in place of what is missing, and counted by kind in the summary:
`video` (no file, unreadable, or it ends before the segment), `audio` (no audio track, or one that
covers the segment's frames with more than `AUDIO_GAP_TOLERANCE` s missing), `flow` (Epic flow frames
missing for the segment).

Every row is checked (columns, integers, timestamps, label range) before any video is read.

Order, shards and processes: the rows are shuffled with `seed` (default `DEFAULT_SEED`; None keeps the
CSV's order) and dealt round-robin into the shards, so a label-sorted CSV still gives every shard, and every
stretch of a shard, the dataset's mix of labels: a reader that shuffles only within a buffer or reads a few
files at a time then sees mixed batches. The default shard count (`default_num_shards`) is one shard per
example up to `MAX_DEFAULT_SHARDS` (64): enough files for tf.data to read many in parallel and for
file-based sharding over up to 64 input workers (each gets a file; 2, 4, ..., 64 workers get equal shares),
and no more shards than rows. Videos are prepared in `num_workers` processes (spawned, never forked, because the
parent has TensorFlow loaded); the parent writes their records in the seeded order, so the shards are the
same bytes for any number of processes. Shards are written under hidden temporary names and renamed only
when every row is done: an error, a crashed worker or Ctrl-C leaves no shard that looks complete.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from mtv.data import flow as flow_lib
from mtv.data.audio import AudioConfig, check_audio_covers
from mtv.data.tfrecord import ClipExample, ShardedWriter, serialize_example
from mtv.data.video import Video, frames_for_time_range, load_video
from mtv.errors import DataError
from mtv.utils.fileio import atomic_write_text, writing

GENERIC_COLUMNS = ("path", "label")
EPIC_ID_COLUMNS = ("narration_id", "video_id")
EPIC_FRAME_COLUMNS = ("start_frame", "stop_frame")
EPIC_TIME_COLUMNS = ("start_timestamp", "stop_timestamp")
EPIC_COLUMNS = EPIC_ID_COLUMNS + EPIC_FRAME_COLUMNS
EPIC_LABEL_COLUMNS = ("verb_class", "noun_class")
# EPIC-100 has 97 verb and 300 noun classes (EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv).
EPIC_NUM_CLASSES = {"verb": 97, "noun": 300}
VIDEO_SUFFIXES = (".mp4", ".MP4", ".avi", ".mkv", ".webm", ".mov", ".MOV")
FLOW_SOURCES = ("auto", "epic", "compute")
SKIP_KINDS = ("video", "audio", "flow")
DEFAULT_SEED = 0  # the row order of `mtv data prepare` without --seed
MAX_DEFAULT_SHARDS = 64  # see the module docstring: parallel reads, file sharding over up to 64 input workers
# A worker process imports TensorFlow (~5 s of CPU, ~0.5 GB) before its first video, which pays off only with
# a few dozen videos to share out; the default uses at most one process per this many videos.
VIDEOS_PER_WORKER = 16
_TIMESTAMP = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)")


@dataclasses.dataclass
class Row:
    """One CSV row, validated: where its frames are and what its labels are."""

    line: int
    id: str
    source: str
    labels: dict[str, list[int]]
    label_strings: dict[str, list[str]]
    frame_range: tuple[int, int] | None = None  # 0-based, half open (Epic: from start_frame/stop_frame)
    media_id: str = ""
    time_span: tuple[float, float] | None = None  # seconds (Epic: from start_timestamp/stop_timestamp)


@dataclasses.dataclass
class PrepareResult:
    """What `prepare` wrote and what it skipped."""

    shards: list[Path]
    counts: list[int]
    skipped: list[tuple[str, str]]  # (video or id, reason)
    skip_kinds: list[str] = dataclasses.field(default_factory=list)  # one of SKIP_KINDS per skipped entry
    flow_sources: dict[str, int] = dataclasses.field(default_factory=dict)  # "epic" / "farneback" -> examples

    @property
    def num_written(self) -> int:
        """Examples written over all shards."""
        return sum(self.counts)

    @property
    def skip_counts(self) -> dict[str, int]:
        """Skipped examples by kind (every kind of SKIP_KINDS, zeros included)."""
        counts = collections.Counter(self.skip_kinds)
        return {kind: counts[kind] for kind in SKIP_KINDS}


def _int(value: str, column: str, line: int, csv_path: Path) -> int:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        raise DataError(f"{csv_path}:{line}: column '{column}' must be an integer, got {value!r}") from None


def _check_label(value: int, column: str, line: int, csv_path: Path, num_classes: int | None) -> int:
    if value < 0:
        raise DataError(f"{csv_path}:{line}: {column} {value} is negative; labels are class indices >= 0")
    if num_classes is not None and value >= num_classes:
        raise DataError(f"{csv_path}:{line}: {column} {value} is outside [0, {num_classes})")
    return value


def read_rows(csv_path: str | Path, *, video_root: str | Path | None = None,
              num_classes: int | None = None) -> tuple[list[Row], str]:
    """Reads and validates every row; returns the rows and the layout ("generic" or "epic")."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"CSV file '{csv_path}' does not exist")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in (reader.fieldnames or [])]
        records = list(reader)
    if not header or not records:
        raise DataError(f"CSV file '{csv_path}' is empty: expected a header and at least one row")
    epic = "narration_id" in header or "video_id" in header
    expected = EPIC_ID_COLUMNS if epic else GENERIC_COLUMNS
    missing = [c for c in expected if c not in header]
    if missing:
        raise DataError(
            f"CSV file '{csv_path}' has no column {', '.join(repr(c) for c in missing)}; expected columns "
            f"{','.join(GENERIC_COLUMNS)} or Epic-Kitchens' {','.join(EPIC_COLUMNS + EPIC_LABEL_COLUMNS)} "
            f"(or {','.join(EPIC_TIME_COLUMNS)} for the segment); found {','.join(header)}")
    if epic:
        _check_segment_columns(header, csv_path)
    if epic and sum(c in header for c in EPIC_LABEL_COLUMNS) == 1:
        lacking = [c for c in EPIC_LABEL_COLUMNS if c not in header]
        raise DataError(f"CSV file '{csv_path}' has no column '{lacking[0]}'; Epic-Kitchens CSVs need both "
                        f"{' and '.join(EPIC_LABEL_COLUMNS)}, or neither for unlabelled data")
    root = Path(video_root) if video_root else csv_path.parent
    rows = []
    first_line: dict[str, tuple[int, dict]] = {}  # id -> (line, record) of its first row
    for line, rec in enumerate(records, start=2):
        rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k}
        row = _epic_row(rec, line, csv_path, root) if epic else _generic_row(rec, line, csv_path, root, num_classes)
        if row.id in first_line:
            before, before_rec = first_line[row.id]
            what = "repeats line" if before_rec == rec else "has the same id as line"
            raise DataError(f"{csv_path}:{line}: this row {what} {before} (id '{row.id}'); every example needs a "
                            "unique id because results files are keyed by id: remove the duplicate row or give "
                            "each row its own 'id'")
        first_line[row.id] = (line, rec)
        rows.append(row)
    return rows, "epic" if epic else "generic"


def infer_num_classes(*, config: str | os.PathLike | Any = None, class_list: str | Path | None = None) -> int | None:
    """The class count from a class-list file (one name per line) or an experiment config (path or loaded), or None."""
    from mtv.errors import ConfigError

    if class_list:
        path = Path(class_list)
        try:
            names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"class list '{path}' cannot be read: {err}") from None
        if not names:
            raise DataError(f"class list '{path}' is empty: expected one class name per line")
        return len(names)
    if config:
        from mtv.io.configs import load_config

        loaded = load_config(config) if isinstance(config, (str, os.PathLike)) else config
        dc = loaded.get("dataset_configs") or {}
        count = dc.get("num_classes")
        if count is None:
            where = config if isinstance(config, (str, os.PathLike)) else "--config"
            raise ConfigError(f"{where}: dataset_configs.num_classes is not set; pass --num_classes")
        return int(count)
    return None


def _generic_row(rec: dict, line: int, csv_path: Path, root: Path, num_classes: int | None) -> Row:
    if not rec["path"]:
        raise DataError(f"{csv_path}:{line}: column 'path' is empty")
    label = _check_label(_int(rec["label"], "label", line, csv_path), "label", line, csv_path, num_classes)
    path = Path(rec["path"])
    source = path if path.is_absolute() else root / path
    strings = {"label": [rec["label_name"]]} if rec.get("label_name") else {}
    example_id = rec.get("id") or path.with_suffix("").as_posix()
    return Row(line, example_id, str(source), {"label": [label]}, strings, media_id=str(path))


def _check_segment_columns(header: list[str], csv_path: Path) -> None:
    """An Epic CSV needs a whole pair of segment columns: frames, timestamps, or both."""
    pairs = (EPIC_FRAME_COLUMNS, EPIC_TIME_COLUMNS)
    for pair in pairs:
        lacking = [c for c in pair if c not in header]
        if len(lacking) == 1:
            partner = pair[1] if lacking[0] == pair[0] else pair[0]
            raise DataError(f"CSV file '{csv_path}' has no column '{lacking[0]}' to go with '{partner}'")
    if not any(all(c in header for c in pair) for pair in pairs):
        raise DataError(f"CSV file '{csv_path}' has no column 'start_frame' or 'start_timestamp': an Epic-Kitchens "
                        f"segment needs {','.join(EPIC_TIME_COLUMNS)} or {','.join(EPIC_FRAME_COLUMNS)}; found "
                        f"{','.join(header)}")


def parse_timestamp(value: str) -> float:
    """`HH:MM:SS.ff` (or `MM:SS.ff`) -> seconds; raises ValueError for anything else."""
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise ValueError(value)
    hours, minutes, seconds = int(match.group(1) or 0), int(match.group(2)), float(match.group(3))
    if minutes >= 60 or seconds >= 60:
        raise ValueError(value)
    return 3600 * hours + 60 * minutes + seconds


def _time(value: str, column: str, line: int, csv_path: Path) -> float:
    try:
        return parse_timestamp(value)
    except ValueError:
        raise DataError(f"{csv_path}:{line}: column '{column}' must be a time HH:MM:SS.ff, got {value!r}") from None


def _epic_row(rec: dict, line: int, csv_path: Path, root: Path) -> Row:
    frame_range = time_span = None
    if "start_frame" in rec:
        start = _int(rec["start_frame"], "start_frame", line, csv_path)
        stop = _int(rec["stop_frame"], "stop_frame", line, csv_path)
        if start < 1 or stop < start:
            raise DataError(f"{csv_path}:{line}: start_frame {start} and stop_frame {stop} must satisfy "
                            "1 <= start_frame <= stop_frame")
        frame_range = (start - 1, stop)
    if "start_timestamp" in rec:
        t0 = _time(rec["start_timestamp"], "start_timestamp", line, csv_path)
        t1 = _time(rec["stop_timestamp"], "stop_timestamp", line, csv_path)
        if t1 <= t0:
            raise DataError(f"{csv_path}:{line}: stop_timestamp {rec['stop_timestamp']} must be after "
                            f"start_timestamp {rec['start_timestamp']}")
        time_span = (t0, t1)
    labels, strings = {}, {}
    if "verb_class" in rec:
        for name in ("verb", "noun"):
            column = f"{name}_class"
            value = _int(rec[column], column, line, csv_path)
            labels[name] = [_check_label(value, column, line, csv_path, EPIC_NUM_CLASSES[name])]
            if rec.get(name):
                strings[name] = [rec[name]]
    return Row(line, rec["narration_id"], str(root / rec["video_id"]), labels, strings,
               frame_range=frame_range, media_id=rec["video_id"], time_span=time_span)


def find_epic_source(root: Path, video_id: str) -> Path | None:
    """The video file or frames directory of an Epic-Kitchens video under `root`."""
    participant = video_id.split("_")[0]
    for folder in (root, root / participant / "videos"):
        for suffix in VIDEO_SUFFIXES:
            if (folder / f"{video_id}{suffix}").is_file():
                return folder / f"{video_id}{suffix}"
    for folder in (root / video_id, root / participant / "rgb_frames" / video_id):
        if folder.is_dir():
            return folder
    return None


class _Skip(Exception):
    """A segment that cannot be stored whole: its kind (one of SKIP_KINDS) and the DataError's message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@contextlib.contextmanager
def _skipped_as(kind: str):
    """Turns a DataError raised in the block into a _Skip of `kind`."""
    try:
        yield
    except DataError as e:
        raise _Skip(kind, str(e)) from e


@dataclasses.dataclass(frozen=True)
class _Options:
    layout: str
    min_resize: int | None
    max_frames: int | None
    frames_fps: float
    with_audio: bool
    with_flow: bool
    flow_source: str
    flow_stride: int | None
    sample_rate: int


def _source(row: Row, layout: str) -> Path:
    source = Path(row.source)
    if layout == "epic":
        found = find_epic_source(source.parent, row.media_id)
        if found is None:
            raise DataError(f"no video file or frames directory for '{row.media_id}' under '{source.parent}'")
        source = found
    if not source.exists():
        raise DataError(f"'{source}' does not exist")
    return source


def _segment(row: Row, source: Path, opts: _Options) -> tuple[dict, str | None]:
    """load_video's range argument for the row, and which columns gave it ("timestamps"/"frame_numbers")."""
    if source.is_file() and row.time_span is not None:
        return {"time_range": row.time_span}, "timestamps"
    if row.frame_range is not None:
        return {"frame_range": row.frame_range}, "frame_numbers"
    if row.time_span is not None:
        return {"frame_range": frames_for_time_range(row.time_span, opts.frames_fps)}, "timestamps"
    return {}, None


def _load(row: Row, source: Path, segment: dict, opts: _Options) -> Video:
    """The row's frames (and audio at opts.sample_rate), refusing a video that ends before the segment."""
    kwargs = dict(segment, min_resize=opts.min_resize, max_frames=opts.max_frames)
    if source.is_dir():
        video = load_video(source, fps=opts.frames_fps, **kwargs)
    else:
        video = load_video(source, with_audio=opts.with_audio, audio_sample_rate=opts.sample_rate, **kwargs)
    if segment:
        start, stop = _span(segment, video.fps)
        wanted = min(stop - start, opts.max_frames or stop - start)
        if video.num_frames < wanted - 1:  # one frame of slack for a span rounded up past the last frame
            raise DataError(f"'{source}' has only {video.num_frames} of the {wanted} frames of the segment "
                            f"(frames {start + 1}..{stop} at {video.fps:g} fps): it ends before the segment does")
    return video


def _span(segment: dict, fps: float) -> tuple[int, int] | None:
    """The 0-based, half-open frame range a `_segment` result names at `fps`, or None for the whole video."""
    if "time_range" in segment:
        return frames_for_time_range(segment["time_range"], fps)
    return segment.get("frame_range")


def _rgb_numbers(row: Row, segment: dict, video: Video) -> tuple[int, int]:
    """1-based, inclusive numbers of the stored frames in Epic's released numbering (what flow_frames follows)."""
    read = _span(segment, video.fps) or (0, video.num_frames)
    start, stop = row.frame_range if row.frame_range is not None else read
    kept = video.num_frames / (read[1] - read[0])
    if kept < 1:  # max_frames kept the first part of the segment only
        stop = start + max(1, round((stop - start) * kept))
    return start + 1, stop


def _flow(row: Row, segment: dict, source: Path, video: Video, opts: _Options) -> tuple[np.ndarray, str]:
    """uint8 flow [T - 1, H, W, 2] between the stored frames, and where it came from ("epic"/"farneback")."""
    folder = Path(row.source).parent / row.media_id.split("_")[0] / "flow_frames" / row.media_id
    use_epic = opts.flow_source == "epic" or (opts.flow_source == "auto" and opts.layout == "epic" and folder.is_dir())
    height, width = video.frames.shape[1:3]
    if use_epic:
        if not folder.is_dir():
            raise DataError(f"no Epic flow folder '{folder}' for '{row.media_id}' (--flow_source epic)")
        stride = opts.flow_stride or flow_lib.epic_flow_stride(row.media_id)
        first, last = flow_lib.epic_flow_numbers(*_rgb_numbers(row, segment, video), stride)
        flow = flow_lib.read_epic_flow(folder, first, last, as_uint8=True)
        picks = np.linspace(0, len(flow) - 1, max(video.num_frames - 1, 1)).round().astype(int)
        pixels = flow_lib.to_pixels(flow_lib.resize_flow(flow_lib.dequantize(flow[picks]), height, width))
        return flow_lib.quantize(pixels), "epic"
    if video.num_frames < 2:
        raise DataError(f"'{source}' has one frame in the segment: flow needs at least two")
    return flow_lib.compute_flow(video.frames, as_uint8=True), "farneback"


def _example(row: Row, opts: _Options) -> tuple[ClipExample, str | None, str | None]:
    """The row's ClipExample, where its flow came from, and which columns gave its segment; or a _Skip."""
    with _skipped_as("video"):
        source = _source(row, opts.layout)
        segment, segment_by = _segment(row, source, opts)
    if opts.with_audio and source.is_dir():
        raise _Skip("audio", f"'{source}' is a directory of frames, which has no audio track: --audio needs the "
                             "video file")
    with _skipped_as("video"):
        video = _load(row, source, segment, opts)
    example = ClipExample(id=row.id, frames=video.frames, labels=row.labels, label_strings=row.label_strings,
                          fps=video.fps, media_id=row.media_id)
    flow_from = None
    if opts.with_audio:
        with _skipped_as("audio"):
            span = f" (segment '{row.id}')" if opts.layout == "epic" else ""
            check_audio_covers(video, what=f"'{source}'{span}")
        example.audio, example.sample_rate = video.audio, video.sample_rate
    if opts.with_flow:
        with _skipped_as("flow"):
            example.flow, flow_from = _flow(row, segment, source, video, opts)
    return example, flow_from, segment_by


def default_num_shards(num_examples: int) -> int:
    """One shard per example up to MAX_DEFAULT_SHARDS, so no shard is empty unless rows are skipped."""
    return max(1, min(MAX_DEFAULT_SHARDS, num_examples))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which `taskset` and containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this OS
        return os.cpu_count() or 1


def default_num_workers(num_videos: int) -> int:
    """The usable CPU count, but at most one process per VIDEOS_PER_WORKER videos (at least one)."""
    return max(1, min(usable_cpus(), num_videos // VIDEOS_PER_WORKER))


def shuffled(rows: list[Row], seed: int | None) -> list[Row]:
    """`rows` in the order `seed` gives (numpy's PCG64 permutation), or unchanged for seed None."""
    if seed is None:
        return list(rows)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def _prepare_row(row: Row, opts: _Options, jpeg_quality: int) -> tuple:
    """One row, in a worker or in-process: ("ok", record bytes, flow_from, segment_by) or ("skip", kind, reason).

    A skip is returned, not raised, because _Skip does not survive pickling back to the parent.
    """
    try:
        example, flow_from, segment_by = _example(row, opts)
        with _skipped_as("video"):
            record = serialize_example(example, jpeg_quality)
        return "ok", record, flow_from, segment_by
    except _Skip as e:
        return "skip", e.kind, str(e)


def _init_worker() -> None:
    """Each worker is one of num_workers processes sharing the cores: OpenCV gets one thread."""
    import cv2

    cv2.setNumThreads(1)


def _prepared(rows: list[Row], opts: _Options, jpeg_quality: int, num_workers: int) -> Iterator[tuple[Row, tuple]]:
    """Yields (row, _prepare_row result) in the order of `rows`, from `num_workers` spawned processes.

    At most 2 x num_workers rows are in flight, so a slow video holds back a bounded number of finished
    records; the parent writes them in order, which keeps the output independent of the process count.
    """
    if num_workers <= 1:
        for row in rows:
            yield row, _prepare_row(row, opts, jpeg_quality)
        return
    import multiprocessing

    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    pending: collections.deque = collections.deque()
    todo = iter(rows)
    finished = False
    try:
        while True:
            while len(pending) < 2 * num_workers:
                row = next(todo, None)
                if row is None:
                    break
                pending.append((row, pool.submit(_prepare_row, row, opts, jpeg_quality)))
            if not pending:
                break
            row, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise DataError(f"a worker process of `mtv data prepare` died (killed, out of memory, or a crash in "
                                f"a decoder) while preparing line {row.line} ('{row.source}') or a row after it; no "
                                "shard was written. Run again with --num_workers=1 to see which video fails") from None
            yield row, result
        finished = True
    finally:
        # On an error or Ctrl-C, queued rows are dropped (running ones end on their own) and the caller's writer
        # discards its temporaries.
        pool.shutdown(wait=finished, cancel_futures=True)


def prepare(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    num_shards: int | None = None,
    seed: int | None = DEFAULT_SEED,
    num_workers: int | None = None,
    video_root: str | Path | None = None,
    name: str | None = None,
    num_classes: int | None = None,
    min_resize: int | None = 256,
    max_frames: int | None = None,
    frames_fps: float = 30.0,
    with_audio: bool = False,
    with_flow: bool = False,
    jpeg_quality: int = 90,
    progress: bool = True,
    flow_source: str = "auto",
    flow_stride: int | None = None,
) -> PrepareResult:
    """Writes `<out_dir>/<name>-0000i-of-0000N.tfrecord` from a CSV (see the module docstring).

    Audio (with_audio) is the segment's own span, mono at 16 kHz. Flow (with_flow): `flow_source`
    "auto" reads Epic's `flow_frames` where the video has that folder and computes Farnebäck flow
    elsewhere, "epic" requires Epic's, "compute" always computes; `flow_stride` overrides the RGB
    frames per Epic flow frame (default from the video id: 2 for EPIC-55, 1 for EPIC-100). A JSON
    summary, with what was skipped and why, goes to `<name>-summary.json`.

    num_shards: default `default_num_shards(rows)`. seed: the row order (None: the CSV's). num_workers:
    processes preparing videos, default `default_num_workers(rows)`; the output does not depend on it. The
    processes are spawned, so a script that calls this with several needs the `if __name__ == "__main__":` guard.
    """
    if num_shards is not None and num_shards < 1:
        raise DataError(f"--num_shards must be >= 1, got {num_shards}")
    if num_workers is not None and num_workers < 1:
        raise DataError(f"--num_workers must be >= 1, got {num_workers}")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"--num_classes must be >= 1, got {num_classes}")
    if flow_source not in FLOW_SOURCES:
        raise DataError(f"--flow_source must be one of {', '.join(FLOW_SOURCES)}, got '{flow_source}'")
    if flow_stride is not None and flow_stride < 1:
        raise DataError(f"--flow_stride must be >= 1, got {flow_stride}")
    if frames_fps <= 0:
        raise DataError(f"--frames_fps must be > 0, got {frames_fps}")
    rows, layout = read_rows(csv_path, video_root=video_root, num_classes=num_classes)
    if with_flow and flow_source == "epic" and layout != "epic":
        raise DataError(f"--flow_source epic reads Epic-Kitchens flow_frames, but '{csv_path}' is a "
                        f"{','.join(GENERIC_COLUMNS)} CSV: use --flow_source auto or compute")
    if num_classes is None and layout == "generic":
        logging.warning("labels of '%s' are not checked against a class count: pass --num_classes, --classes or "
                        "--config to refuse labels outside [0, N)", csv_path)
    opts = _Options(layout, min_resize, max_frames, frames_fps, with_audio, with_flow, flow_source, flow_stride,
                    AudioConfig().sample_rate)
    name = name or Path(csv_path).stem
    skipped: list[tuple[str, str]] = []
    kinds: list[str] = []
    flow_sources: collections.Counter = collections.Counter()
    segments_by: collections.Counter = collections.Counter()
    rows = shuffled(rows, seed)
    num_shards = num_shards or default_num_shards(len(rows))
    workers = min(num_workers or default_num_workers(len(rows)), len(rows))
    with ShardedWriter(out_dir, name, num_shards) as writer:
        results = _prepared(rows, opts, jpeg_quality, workers)
        for row, (status, *rest) in tqdm(results, total=len(rows), desc=f"mtv data prepare {name}", unit="video",
                                         disable=not progress):
            if status == "skip":
                kind, reason = rest
                skipped.append((row.source if layout == "generic" else row.id, reason))
                kinds.append(kind)
                logging.warning("skipping %s (line %d, %s): %s", row.id, row.line, kind, reason)
                continue
            record, flow_from, segment_by = rest
            writer.write(record)
            flow_sources[flow_from] += flow_from is not None
            segments_by[segment_by] += segment_by is not None
    result = PrepareResult(writer.paths, writer.counts, skipped, kinds, {k: v for k, v in flow_sources.items() if v})
    if len(result.flow_sources) > 1:
        logging.warning("'%s': flow of %s; the two kinds of flow differ, so a model sees two kinds of input "
                        "(--flow_source epic or compute makes it one)", csv_path,
                        " and ".join(f"{n} examples from {k}" for k, n in result.flow_sources.items()))
    _write_summary(out_dir, name, csv_path, layout, result, {k: v for k, v in segments_by.items() if v}, seed)
    if not result.num_written:
        raise DataError(f"none of the {len(rows)} videos in '{csv_path}' could be stored; first error: "
                        f"{skipped[0][0]}: {skipped[0][1]}")
    return result


def _write_summary(out_dir, name: str, csv_path, layout: str, result: PrepareResult, segments_by: dict,
                   seed: int | None) -> None:
    summary = {"csv": str(csv_path), "layout": layout, "num_examples": result.num_written, "seed": seed,
               "shards": {p.name: c for p, c in zip(result.shards, result.counts, strict=True)}}
    if segments_by:
        summary["segments_from"] = segments_by
    if result.flow_sources:
        summary["flow_sources"] = result.flow_sources
    summary["skipped_counts"] = result.skip_counts
    summary["skipped"] = [{"video": v, "kind": k, "reason": r}
                          for (v, r), k in zip(result.skipped, result.skip_kinds, strict=True)]
    summary_path = Path(out_dir, f"{name}-summary.json")
    with writing(summary_path):
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
