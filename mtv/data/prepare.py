"""Turn a CSV of videos and labels into sharded TFRecords (the `mtv data prepare` command).

Two CSV layouts, told apart by their header:

* `path,label` (optional `id`, `label_name`): `path` is a video file or a directory of frames,
  relative to `video_root` (default: the CSV's folder); `label` is an integer class, written to
  `clip/label/index`.
* Epic-Kitchens: `narration_id,video_id,start_frame,stop_frame` plus `verb_class,noun_class`
  (both, or neither for the unlabelled test split; `verb`/`noun` text columns are kept if present).
  Frames `start_frame..stop_frame` (1-based, inclusive) of `video_id` come from the first of
  `<root>/<video_id>.<ext>`, `<root>/<P>/videos/<video_id>.<ext>`, `<root>/<video_id>/` (frames) or
  `<root>/<P>/rgb_frames/<video_id>/`, where `<P>` is the participant (`P01` of `P01_11`). Labels go
  to `clip/label/verb/index` and `clip/label/noun/index`.

Every row is checked (columns, integers, label range) before any video is read. Videos that cannot
be read are skipped and listed at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from mtv.data import flow as flow_lib
from mtv.data.audio import AudioConfig, resample
from mtv.data.tfrecord import ClipExample, ShardedWriter, serialize_example
from mtv.data.video import Video, load_video
from mtv.errors import DataError
from mtv.utils.fileio import atomic_write_text, writing

GENERIC_COLUMNS = ("path", "label")
EPIC_COLUMNS = ("narration_id", "video_id", "start_frame", "stop_frame")
EPIC_LABEL_COLUMNS = ("verb_class", "noun_class")
# EPIC-100 has 97 verb and 300 noun classes (EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv).
EPIC_NUM_CLASSES = {"verb": 97, "noun": 300}
VIDEO_SUFFIXES = (".mp4", ".MP4", ".avi", ".mkv", ".webm", ".mov", ".MOV")


@dataclasses.dataclass
class Row:
    """One CSV row, validated: where its frames are and what its labels are."""

    line: int
    id: str
    source: str
    labels: dict[str, list[int]]
    label_strings: dict[str, list[str]]
    frame_range: tuple[int, int] | None = None  # 0-based, half open
    media_id: str = ""


@dataclasses.dataclass
class PrepareResult:
    """What `prepare` wrote and what it skipped."""

    shards: list[Path]
    counts: list[int]
    skipped: list[tuple[str, str]]

    @property
    def num_written(self) -> int:
        """Examples written over all shards."""
        return sum(self.counts)


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
    expected = EPIC_COLUMNS if epic else GENERIC_COLUMNS
    missing = [c for c in expected if c not in header]
    if missing:
        raise DataError(
            f"CSV file '{csv_path}' has no column {', '.join(repr(c) for c in missing)}; expected columns "
            f"{','.join(GENERIC_COLUMNS)} or Epic-Kitchens' {','.join(EPIC_COLUMNS + EPIC_LABEL_COLUMNS)}; "
            f"found {','.join(header)}")
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


def infer_num_classes(*, config: str | None = None, class_list: str | Path | None = None) -> int | None:
    """The class count from a class-list file (one name per line) or an experiment config, or None."""
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

        dc = load_config(config).get("dataset_configs") or {}
        count = dc.get("num_classes")
        if count is None:
            raise ConfigError(f"{config}: dataset_configs.num_classes is not set; pass --num_classes")
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


def _epic_row(rec: dict, line: int, csv_path: Path, root: Path) -> Row:
    start = _int(rec["start_frame"], "start_frame", line, csv_path)
    stop = _int(rec["stop_frame"], "stop_frame", line, csv_path)
    if start < 1 or stop < start:
        raise DataError(f"{csv_path}:{line}: start_frame {start} and stop_frame {stop} must satisfy "
                        "1 <= start_frame <= stop_frame")
    labels, strings = {}, {}
    if "verb_class" in rec:
        for name in ("verb", "noun"):
            column = f"{name}_class"
            value = _int(rec[column], column, line, csv_path)
            labels[name] = [_check_label(value, column, line, csv_path, EPIC_NUM_CLASSES[name])]
            if rec.get(name):
                strings[name] = [rec[name]]
    return Row(line, rec["narration_id"], str(root / rec["video_id"]), labels, strings,
               frame_range=(start - 1, stop), media_id=rec["video_id"])


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


def _epic_flow(root: Path, video_id: str, frame_range: tuple[int, int], num_frames: int) -> np.ndarray | None:
    """Precomputed Epic TV-L1 flow (half the RGB rate) stretched to num_frames - 1 frames, if present."""
    folder = root / video_id.split("_")[0] / "flow_frames" / video_id
    if not folder.is_dir():
        return None
    start, stop = frame_range
    flow = flow_lib.read_flow_dir(folder, frame_range=(start // 2, max((stop + 1) // 2, start // 2 + 1)),
                                  as_uint8=True)
    picks = np.linspace(0, len(flow) - 1, max(num_frames - 1, 1)).round().astype(int)
    return flow[picks]


def _load(row: Row, layout: str, *, min_resize: int | None, max_frames: int | None, frames_fps: float,
          with_audio: bool) -> tuple[Video, Path]:
    source = Path(row.source)
    if layout == "epic":
        found = find_epic_source(source.parent, row.media_id)
        if found is None:
            raise DataError(f"no video file or frames directory for '{row.media_id}' under '{source.parent}'")
        source = found
    if not source.exists():
        raise DataError(f"'{source}' does not exist")
    kwargs = dict(frame_range=row.frame_range, min_resize=min_resize, max_frames=max_frames)
    if source.is_dir():
        return load_video(source, fps=frames_fps, **kwargs), source
    return load_video(source, with_audio=with_audio, **kwargs), source


def prepare(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    num_shards: int = 1,
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
) -> PrepareResult:
    """Writes `<out_dir>/<name>-0000i-of-0000N.tfrecord` from a CSV (see the module docstring).

    Audio (with_audio) is stored mono at 16 kHz; flow (with_flow) is read from Epic's `flow_frames`
    when present, otherwise computed with Farnebäck. A JSON summary goes to `<name>-summary.json`.
    """
    if num_shards < 1:
        raise DataError(f"--shards must be >= 1, got {num_shards}")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"--num_classes must be >= 1, got {num_classes}")
    rows, layout = read_rows(csv_path, video_root=video_root, num_classes=num_classes)
    if num_classes is None and layout == "generic":
        logging.warning("labels of '%s' are not checked against a class count: pass --num_classes, --classes or "
                        "--config to refuse labels outside [0, N)", csv_path)
    name = name or Path(csv_path).stem
    skipped: list[tuple[str, str]] = []
    rate = AudioConfig().sample_rate
    with ShardedWriter(out_dir, name, num_shards) as writer:
        for row in tqdm(rows, desc=f"mtv data prepare {name}", unit="video", disable=not progress):
            try:
                video, source = _load(row, layout, min_resize=min_resize, max_frames=max_frames,
                                      frames_fps=frames_fps, with_audio=with_audio)
                example = ClipExample(id=row.id, frames=video.frames, labels=row.labels,
                                      label_strings=row.label_strings, fps=video.fps, media_id=row.media_id)
                if with_audio and video.audio is not None:
                    example.audio, example.sample_rate = resample(video.audio, video.sample_rate, rate), rate
                if with_flow:
                    example.flow = _flow_for(row, layout, source, video)
                writer.write(serialize_example(example, jpeg_quality))
            except DataError as e:
                skipped.append((row.source if layout == "generic" else row.id, str(e)))
                logging.warning("skipping %s (line %d): %s", row.id, row.line, e)
    result = PrepareResult(writer.paths, writer.counts, skipped)
    summary = {"csv": str(csv_path), "layout": layout, "num_examples": result.num_written,
               "shards": {p.name: c for p, c in zip(result.shards, result.counts, strict=True)},
               "skipped": [{"video": v, "reason": r} for v, r in skipped]}
    summary_path = Path(out_dir, f"{name}-summary.json")
    with writing(summary_path):
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    if not result.num_written:
        raise DataError(f"none of the {len(rows)} videos in '{csv_path}' could be read; first error: "
                        f"{skipped[0][0]}: {skipped[0][1]}")
    return result


def _flow_for(row: Row, layout: str, source: Path, video: Video) -> np.ndarray:
    if layout == "epic":
        flow = _epic_flow(Path(row.source).parent, row.media_id, row.frame_range, video.num_frames)
        if flow is not None:
            height, width = video.frames.shape[1:3]
            return flow_lib.quantize(flow_lib.to_pixels(
                flow_lib.resize_flow(flow_lib.dequantize(flow), height, width)))
    if video.num_frames < 2:
        raise DataError(f"'{source}' has one frame: flow needs at least two")
    return flow_lib.compute_flow(video.frames, as_uint8=True)
