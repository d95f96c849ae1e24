"""A trained localizer at work: load it from its workdir, localize frames or a video file, score mAP, plot.

A video is cut into consecutive windows of `window_frames` frames at the model's frame rate (a video at
another rate is read every `round(rate / fps)`-th frame); frames after the last whole window get no step.
The backbone runs on `chunk_windows` windows at a time, each chunk decoded by seeking
(`mtv.data.video.read_video(frame_range=...)`), so only the per-step features (a few floats per step) of
the whole video are held at once; the head then sees the whole feature sequence and `decode_segments`
turns its outputs into (start, end, label, score) with the config's post-processing.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtv.errors import CheckpointError, DataError, ShapeError


class Localizer:
    """A `LocalizationModel` with its config and `localizer.json` info (class names, fps, window size)."""

    def __init__(self, model, config, info: dict):
        from mtv.long.train_localization import geometry_of, postprocess_settings

        self.model, self.config, self.info = model, config, dict(info)
        self.class_names = list(info["class_names"])
        self.fps = float(info["fps"])
        self.window_frames = int(info["window_frames"])
        self.size = int(info["size"])
        self.geometry = geometry_of(model, config, self.fps)
        self.postprocess = postprocess_settings(config)

    @property
    def window_seconds(self) -> float:
        """Seconds per window."""
        return self.window_frames / self.fps

    def features(self, windows: np.ndarray, chunk_windows: int = 16) -> np.ndarray:
        """Per-step features [N x steps_per_window, D] of uint8 windows [N, T, H, W, 3]."""
        from mtv.data.sources import normalize_frames

        parts = []
        for first in range(0, len(windows), chunk_windows):
            x = normalize_frames(windows[first:first + chunk_windows])[None]
            parts.append(np.asarray(self.model.features(x))[0])
        return np.concatenate(parts)

    def decode(self, features: np.ndarray, duration: float, fps: float | None = None) -> list[tuple]:
        """Segments (start, end, label, score), best first, of a video's per-step features (frames at `fps`)."""
        from mtv.long.localization import decode_segments

        try:
            out = self.model.head(features[None].astype(np.float32))
        except ShapeError as e:
            raise DataError(f"the video is too short for this localizer: {e}") from None
        return decode_segments(np.asarray(out["logits"])[0], np.asarray(out["distances"])[0],
                               num_steps=len(features),
                               step_seconds=self.window_frames / (fps or self.fps) / self.geometry.steps_per_window,
                               num_levels=self.geometry.num_levels, class_names=self.class_names,
                               duration=duration, **self.postprocess)

    def windows_of(self, frames: np.ndarray, where: str = "the video") -> np.ndarray:
        """uint8 frames [T, H, W, 3] at the model's rate -> whole windows [N, window_frames, H, W, 3]."""
        count = len(frames) // self.window_frames
        if count == 0:
            raise DataError(f"{where} has {len(frames)} frames ({len(frames) / self.fps:.2f} s at {self.fps:g} fps), "
                            f"shorter than one window of {self.window_frames} frames ({self.window_seconds:g} s)")
        if tuple(frames.shape[1:]) != (self.size, self.size, 3):
            raise DataError(f"{where}: frames are {tuple(frames.shape[1:])}, the localizer takes "
                            f"({self.size}, {self.size}, 3)")
        return frames[:count * self.window_frames].reshape(count, self.window_frames, *frames.shape[1:])

    def localize_frames(self, frames: np.ndarray, where: str = "the video", fps: float | None = None) -> list[tuple]:
        """Segments of uint8 frames [T, size, size, 3] at `fps` (default: the model's frame rate)."""
        windows = self.windows_of(np.asarray(frames), where)
        return self.decode(self.features(windows), len(frames) / (fps or self.fps), fps)

    def localize_video(self, path: str | os.PathLike, chunk_windows: int = 16) -> dict:
        """{'video', 'duration', 'windows', 'segments'} of a video file, decoded chunk by chunk by seeking."""
        from mtv.data.untrimmed import video_duration
        from mtv.data.video import read_video
        from mtv.long.datasets import frame_stride, square

        path = Path(path)
        if not path.is_file():
            raise DataError(f"video file '{path}' does not exist")
        stride, rate = frame_stride(path, self.fps)
        duration = video_duration(path)
        source_frames = int(round(duration * rate))
        span = self.window_frames * stride  # source frames per window
        count = source_frames // span
        if count == 0:
            raise DataError(f"'{path}' is {duration:.2f} s long, shorter than one window of the localizer "
                            f"({self.window_frames} frames at {self.fps:g} fps = {self.window_seconds:g} s)")
        parts = []
        for first in range(0, count, chunk_windows):
            last = min(count, first + chunk_windows)
            video = read_video(path, frame_range=(first * span, last * span), with_audio=False,
                               frame_transform=lambda f: square(f, self.size))
            frames = np.asarray(video.frames)[::stride]
            whole = len(frames) // self.window_frames
            if whole:
                parts.append(self.features(self.windows_of(frames[:whole * self.window_frames], f"'{path}'"),
                                           chunk_windows))
            if whole < last - first:  # the container promised more frames than it holds
                break
        if not parts:
            raise DataError(f"'{path}': no whole window of {self.window_frames} frames could be decoded")
        features = np.concatenate(parts)
        windows = len(features) // self.geometry.steps_per_window
        return {"video": str(path), "duration": duration, "windows": windows,
                "window_seconds": self.window_frames * stride / rate,
                "segments": self.decode(features, duration, rate / stride)}


def load_localizer(path: str | os.PathLike) -> Localizer:
    """The localizer of a run workdir (config.json, localizer.json and the newest checkpoint)."""
    from mtv.long.localization import build_localization_model
    from mtv.long.train_localization import INFO_FILE, restore_state
    from mtv.training import checkpoints as ckpt_lib
    from mtv.training.trainer import load_train_config

    path = Path(path)
    for name in ("config.json", INFO_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"'{path}' is not a localizer run: it has no {name} (train one with `mtv train "
                                  "--config=configs/localization/... --workdir=DIR`)")
    latest = ckpt_lib.latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"'{path}' holds no checkpoint yet")
    config = load_train_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    model = build_localization_model(config, num_classes=len(info["class_names"]), seed=0)
    meta = restore_state(latest, model)
    localizer = Localizer(model, config, info)
    localizer.info["step"] = int(meta["step"])
    return localizer


def evaluate_localizer(localizer: Localizer, videos: Sequence) -> dict:
    """mAP@0.3/0.5/0.7 and their mean (`mean_average_precision`) of the localizer on `UntrimmedVideo`s."""
    from mtv.eval.localization_metrics import mean_average_precision

    if not videos:
        raise DataError("no held-out videos to evaluate the localizer on")
    truth, found = {}, {}
    for video in videos:
        truth[video.name] = [tuple(s) for s in video.segments]
        found[video.name] = localizer.localize_frames(video.frames, f"video '{video.name}'", video.fps)
    result = mean_average_precision(truth, found)
    result["videos"] = len(videos)
    result["detections"] = sum(len(v) for v in found.values())
    return result


def segments_json(result: dict, model: str) -> str:
    """The JSON document `mtv localize` writes: the video, the model and its segments."""
    rows = [{"start": round(s, 4), "end": round(e, 4), "label": label, "score": round(p, 6)}
            for s, e, label, p in result["segments"]]
    return json.dumps({"video": result["video"], "model": model, "duration": result["duration"],
                       "windows": result["windows"], "segments": rows}, indent=1)


def plot_segments(result: dict, class_names: Sequence[str]) -> bytes:
    """A PNG timeline: one row per class with a segment, bars shaded by score."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = [c for c in class_names if any(s[2] == c for s in result["segments"])] or list(class_names)[:1]
    fig, ax = plt.subplots(figsize=(10, 1 + 0.4 * len(labels)))
    top = max((s[3] for s in result["segments"]), default=1.0) or 1.0
    try:
        for start, end, label, score in result["segments"]:
            # Relative shade: an untrained or cautious model's scores are all small but still ordered.
            ax.barh(labels.index(label), end - start, left=start, height=0.8, color="tab:blue",
                    alpha=0.15 + 0.85 * float(score) / top)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlim(0, result["duration"])
        ax.set_xlabel("seconds")
        ax.set_title(f"{Path(result['video']).name}: {len(result['segments'])} segments "
                     f"(shade = score, darkest {top:.3f})")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def evaluate_run(path: str | os.PathLike, data: str | os.PathLike | None = None) -> dict:
    """`mtv evaluate` of a localizer run: mAP on an annotation CSV's videos, or else on the run's held-out set."""
    from mtv.long.datasets import load_csv_videos

    localizer = load_localizer(path)
    if data:
        videos, _ = load_csv_videos(data, fps=localizer.fps, size=localizer.size, class_names=localizer.class_names,
                                    label_column=localizer.info.get("label_column", "label"))
        held_out = f"the videos of {data}"
    else:
        from mtv.long.train_localization import _load_data

        source = _load_data(localizer.config, Path(path), localizer.info.get("videos"))
        videos, held_out = source.heldout, source.held_out
        if not videos:
            raise DataError(f"the run in '{path}' has no held-out videos; give --data=ANNOTATIONS.csv")
    result = evaluate_localizer(localizer, videos)
    summary = {"model": str(path), "step": localizer.info["step"], "held_out": held_out}
    summary.update({k: result[k] for k in ("mAP@0.3", "mAP@0.5", "mAP@0.7", "mAP", "videos", "detections",
                                           "per_class", "thresholds")})
    return summary


def is_localizer_run(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a localizer's workdir (it holds localizer.json)."""
    from mtv.long.train_localization import INFO_FILE

    return bool(path) and (Path(path) / INFO_FILE).is_file()
