"""`mtv predict VIDEO --timeline`: label every window of a whole video, streamed, and plot class probability over time.

A window is one clip of the model (`num_frames` frames `stride` apart at the video's frame rate), so it spans
`num_frames * stride / fps` seconds; windows start every `window_stride` seconds (default: one window, so they
tile the video). Each window is labelled as `mtv predict` labels a video, from `views` CLIPSxCROPS views inside it
(default 1x1: the window's clip, centre crop; with more clips, a longer `window` holds them, placed by the
evaluation rule `mtv.data.sampling.eval_clip_offsets`). Only the windows' frames are decoded, by seeking
(`mtv.data.video.VideoSource`), a few windows at a time: the cost grows with the number of windows and memory
does not grow with the video's length.

Outputs (`write_timeline`): a JSON of every window's class probabilities, a CSV of the same (one row per window,
one column per head and class) and a PNG of the most probable classes' probability over time, all written
atomically together: a failure leaves none of them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mtv.errors import ConfigError, DataError
from mtv.eval import prediction

# Windows decoded and run per step: enough to fill a forward batch, few enough that memory stays flat.
WINDOWS_PER_STEP = 4
# Classes drawn in the plot, per head: the ones with the highest probability in any window.
PLOT_CLASSES = 5


@dataclasses.dataclass(frozen=True)
class Windows:
    """Where a video's windows are: `starts` (first frame of each, `step` apart), each `length` frames, at `fps`."""

    starts: np.ndarray
    length: int
    step: int
    fps: float

    def seconds(self, i: int) -> tuple[float, float]:
        """(start, end) of window `i` in seconds from the first frame."""
        start = int(self.starts[i])
        return start / self.fps, (start + self.length) / self.fps


def plan_windows(num_frames: int, fps: float, clip_frames: int, stride: int, *, window_stride: float | None = None,
                 window: float | None = None, source: str = "the video") -> Windows:
    """The windows of a video of `num_frames` frames: every `window_stride` s, each one clip (or `window` s) long.

    A clip is `clip_frames` frames `stride` apart: it spans `clip_frames * stride` frames. A video shorter than
    one window is a DataError naming `source`.
    """
    clip_span = clip_frames * stride
    length = clip_span if window is None else int(round(window * fps))
    if window is not None and (window <= 0 or length < clip_span):
        raise ConfigError(f"window must be at least one clip ({clip_frames} frames x stride {stride} = "
                          f"{clip_span / fps:.3f} s at {fps:g} fps), got {window} s")
    step = length if window_stride is None else int(round(window_stride * fps))
    if window_stride is not None and (window_stride <= 0 or step < 1):
        raise ConfigError(f"window_stride must be a positive number of seconds of at least one frame "
                          f"(1 / {fps:g} s), got {window_stride}")
    if num_frames < length:
        raise DataError(f"{source} has {num_frames} frames ({num_frames / fps:.3f} s at {fps:g} fps), shorter than "
                        f"one timeline window of {length} frames ({length / fps:.3f} s: {clip_frames} frames x "
                        f"stride {stride}); give a longer video or label it whole with `mtv predict` (no --timeline)")
    return Windows(np.arange(0, num_frames - length + 1, step, dtype=np.int64), length, step, float(fps))


def window_clips(windows: Windows, index: int, config) -> np.ndarray:
    """Clip indices [clips, num_frames] of window `index`: the evaluation rule applied inside the window."""
    from mtv.data.sampling import eval_clip_indices

    clips = eval_clip_indices(windows.length, config.num_frames, config.stride, config.num_test_clips)
    return clips + windows.starts[index]


def _model(model: Any) -> tuple[Any, str]:
    from mtv.io.loading import load

    handle = model if model is not None else prediction.DEFAULT_MODEL
    if isinstance(handle, (str, os.PathLike)):
        return load(handle), os.fspath(handle)
    return handle, type(handle).__name__


def iter_windows(source, model, config, windows: Windows, *, rule: str = "logits_mean", batch_size: int = 4,
                 missing_modality: str = "error") -> Iterator[tuple[int, dict[str, np.ndarray], list[str]]]:
    """(window index, {head: class probabilities}, notes) per window, decoding `WINDOWS_PER_STEP` windows at a time."""
    for first in range(0, len(windows.starts), WINDOWS_PER_STEP):
        group = range(first, min(first + WINDOWS_PER_STEP, len(windows.starts)))
        clips = np.concatenate([window_clips(windows, i, config) for i in group])
        inputs, notes = prediction.clip_inputs(source, model, config, clips, missing_modality=missing_modality)
        got = prediction.EvalInputs(inputs, config, 0, notes)
        logits = prediction.view_logits(model, got, batch_size)
        per = config.num_views  # views of one window, clip-major as the inputs are
        for k, i in enumerate(group):
            probs = {head: prediction.average_views(value[k * per:(k + 1) * per], rule)
                     for head, value in logits.items()}
            yield i, probs, notes


def timeline(video: str | os.PathLike, *, model: Any = None, window_stride: float | None = None,
             window: float | None = None, views: str = "1x1", top: int = 5, rule: str = "logits_mean",
             batch_size: int = 4, missing_modality: str = "error", on_window=None) -> dict:
    """Labels every window of a video: {'video', 'model', ..., 'classes': {head: names}, 'windows': [...]}.

    Each window entry has 'index', 'start'/'end' (seconds), 'start_frame', 'top' ({head: top-k rows as
    `mtv predict`'s}) and 'probabilities' ({head: [per class]}). `on_window(entry)` is called as each is done.
    """
    from mtv.utils import numeric

    numeric.view_score_kind(rule)  # bad arguments fail before the model is loaded or anything decoded
    prediction.parse_views(views)  # CLIPSxCROPS with 1 or 3 crops, else a DataError naming it
    model, name = _model(model)
    if prediction.is_multimodal(model):
        from mtv.eval.multimodal_inputs import check_missing_mode

        check_missing_mode(missing_modality)
    config = prediction.eval_config(model, views)
    source = prediction.open_source(video, model, config)
    windows = plan_windows(source.num_frames, source.fps, config.num_frames, config.stride,
                           window_stride=window_stride, window=window, source=f"'{source.path}'")
    heads: dict[str, list[str] | None] = {}
    entries, notes = [], []
    for i, probs, window_notes in iter_windows(source, model, config, windows, rule=rule, batch_size=batch_size,
                                               missing_modality=missing_modality):
        start, end = windows.seconds(i)
        for head in probs:
            heads.setdefault(head, prediction.class_names(model, head))
        entry = {"index": i, "start": round(start, 6), "end": round(end, 6), "start_frame": int(windows.starts[i]),
                 "top": {h: prediction.top_labels(p, heads[h], top) for h, p in probs.items()},
                 "probabilities": {h: [float(x) for x in p] for h, p in probs.items()}}
        notes += [n for n in window_notes if n not in notes]
        entries.append(entry)
        if on_window is not None:
            on_window(entry)
    return {"video": os.fspath(video), "model": name, "inputs": list(model.input_shapes), "fps": source.fps,
            "num_frames": source.num_frames, "window_frames": windows.length,
            "window_seconds": windows.length / windows.fps,
            "window_stride_seconds": windows.step / windows.fps, "clip": f"{config.num_frames}x{config.stride}",
            "views": f"{config.num_test_clips}x{config.num_spatial_crops}",
            "rule": rule, "num_frames_decoded": source.decoded, "notes": notes,
            "classes": {h: names or [str(c) for c in range(len(entries[0]["probabilities"][h]))]
                        for h, names in heads.items()},
            "windows": entries}


def output_paths(out: str | os.PathLike | None, video: str | os.PathLike) -> dict[str, Path]:
    """{'json', 'csv', 'png'} paths: `out` a directory (existing, or ending in '/') or a prefix; default beside cwd."""
    stem = f"{Path(video).stem}.timeline"
    if out is None:
        prefix = Path(stem)
    elif os.fspath(out).endswith(("/", os.sep)) or Path(out).is_dir():
        prefix = Path(out) / stem
    else:
        prefix = Path(out)
    return {kind: prefix.with_name(f"{prefix.name}.{kind}") for kind in ("json", "csv", "png")}


def timeline_csv(result: dict) -> str:
    """One row per window: index, start, end, then every head's class probabilities (columns 'head:label')."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [(h, names) for h, names in result["classes"].items()]
    writer.writerow(["window", "start", "end"] + [f"{h}:{label}" for h, names in columns for label in names])
    for w in result["windows"]:
        writer.writerow([w["index"], f"{w['start']:.6f}", f"{w['end']:.6f}"]
                        + [f"{p:.6g}" for h, _ in columns for p in w["probabilities"][h]])
    return buffer.getvalue()


def plot_timeline(result: dict, path: str | os.PathLike, classes: int = PLOT_CLASSES) -> None:
    """PNG of the `classes` most probable classes' probability over time (window centres), one panel per head."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only a timeline needs matplotlib
    from matplotlib.figure import Figure

    heads = list(result["classes"])
    figure = Figure(figsize=(11, 2.6 * len(heads) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)  # a canvas of its own: no pyplot, no global backend switch
    centres = [(w["start"] + w["end"]) / 2 for w in result["windows"]]
    for k, head in enumerate(heads):
        axes = figure.add_subplot(len(heads), 1, k + 1)
        probs = np.array([w["probabilities"][head] for w in result["windows"]])
        for c in np.argsort(-probs.max(axis=0), kind="stable")[:classes]:
            axes.plot(centres, probs[:, c], marker="." if len(centres) < 50 else None,
                      label=result["classes"][head][c])
        axes.set_ylim(0.0, 1.0)
        axes.set_ylabel(f"P({head})" if len(heads) > 1 else "probability")
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
        axes.grid(alpha=0.3)
    axes.set_xlabel("seconds")
    figure.suptitle(f"{Path(result['video']).name}: {result['model']}, windows of {result['window_seconds']:.2f} s")
    figure.savefig(os.fspath(path), format="png", dpi=100)


def write_timeline(result: dict, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Writes the JSON, CSV and PNG of a `timeline` result, atomically together; returns their paths."""
    from mtv.utils.fileio import atomic_path

    paths = output_paths(out, result["video"])
    # Every file is finished in its temporary path before any is renamed into place: no half-written set.
    with contextlib.ExitStack() as stack:
        tmp = {kind: stack.enter_context(atomic_path(path)) for kind, path in paths.items()}
        tmp["json"].write_text(json.dumps(result, indent=1), encoding="utf-8")
        tmp["csv"].write_text(timeline_csv(result), encoding="utf-8")
        plot_timeline(result, tmp["png"])
    return paths


def format_window(entry: dict) -> str:
    """One printed line per window: 'start-end s  label p, label p ...' (heads in brackets when several)."""
    parts = []
    for head, rows in entry["top"].items():
        labels = ", ".join(f"{r['label']} {r['probability']:.3f}" for r in rows)
        parts.append(f"[{head}] {labels}" if len(entry["top"]) > 1 else labels)
    return f"{entry['start']:8.2f}-{entry['end']:.2f} s  " + "  ".join(parts)
