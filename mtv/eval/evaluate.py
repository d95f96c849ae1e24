"""`mtv.eval.evaluate`: multi-view evaluation (clips x crops per video), top-k metrics, results files.

Every video is cut into `num_test_clips` clips x 1 or 3 spatial crops (Scenic's `do_multicrop_test`);
the model scores each view and the views are combined by a named rule:
  'logits_mean'   mean of the views' logits (Scenic's `test_step`); scores are logits
  'softmax_mean'  mean of the views' softmax probabilities; scores are probabilities
Metrics are top-1 / top-5 accuracy (percent) per head; with 'verb' and 'noun' heads also Epic-Kitchens'
action accuracy, an action being the (verb, noun) pair ranked by the product of the softmaxed verb and
noun scores (the official scorer's rule, `mtv.epic.scoring.action_scores`). Per-example scores, keyed by
example id, go to a results file (`mtv.epic.results.write_results`).

M&M models (several input streams) are evaluated the same way: every view is a dict of streams, the flow
and audio of view `c * crops + k` covering the same clip `c` as its RGB frames (`mtv.data.tfrecord`). A
stream named in `missing` is not read at all; every view gets `mtv.models.missing.missing_input` for it,
the value modality dropout trains with.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from mtv.errors import ConfigError, DataError
from mtv.utils import numeric
from mtv.utils.numeric import VIEW_RULES, topk_accuracy  # noqa: F401  (part of this module's API)


@dataclasses.dataclass
class EvalResult:
    """Scores per example and head, the labels when known, the metrics, and how many videos were skipped."""

    ids: np.ndarray
    outputs: dict[str, np.ndarray]
    score_kind: str
    labels: dict[str, np.ndarray] | None
    metrics: dict[str, float]
    num_views: int
    skipped: int = 0


def combine_views(view_logits: np.ndarray, rule: str = "logits_mean") -> tuple[np.ndarray, str]:
    """Per-view logits [N, V, C] -> (scores [N, C], score kind) by `rule` (see the module docstring)."""
    view_logits = np.asarray(view_logits)
    if view_logits.ndim != 3:
        raise DataError(f"view logits must be [examples, views, classes], got shape {view_logits.shape}")
    scores, kind = numeric.average_views(view_logits, rule, axis=1)
    return scores.astype(np.float32), kind


def compute_metrics(outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    score_kind: str = "logits") -> dict[str, float]:
    """top1/top5 per head ('top1', 'top5' for one head, '<head>_top1' for several); Epic action metrics."""
    metrics: dict[str, float] = {}
    single = len(outputs) == 1
    for head, scores in outputs.items():
        if head not in labels:
            continue
        prefix = "" if single else f"{head}_"
        metrics[f"{prefix}top1"] = topk_accuracy(scores, labels[head], 1)
        if scores.shape[1] >= 5:
            metrics[f"{prefix}top5"] = topk_accuracy(scores, labels[head], 5)
    if {"verb", "noun"} <= set(outputs) and {"verb", "noun"} <= set(labels):
        from mtv.epic import scoring as epic
        raw = {h: np.asarray(outputs[h], np.float64) for h in ("verb", "noun")}
        if score_kind == "probabilities":
            raw = {h: np.log(np.maximum(v, 1e-30)) for h, v in raw.items()}
        verbs, nouns, _ = epic.action_scores(raw["verb"], raw["noun"], top_n=5)
        truth = {h: (np.asarray(labels[h]).argmax(-1) if np.ndim(labels[h]) == 2 else np.asarray(labels[h]))
                 for h in ("verb", "noun")}
        hits = epic.action_id(verbs, nouns) == epic.action_id(truth["verb"], truth["noun"])[:, None]
        metrics["action_top1"] = float(hits[:, :1].any(axis=1).mean() * 100.0)
        metrics["action_top5"] = float(hits[:, :5].any(axis=1).mean() * 100.0)
    return metrics


def head_names(model) -> list[str]:
    """The model's output heads: its split names, or ['logits'] for a single head."""
    return list(model.spec.get("split_names") or []) if model.spec.get("class_splits") else ["logits"]


def score_views(model, views, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Logits of every view: views float [N, V, T, H, W, 3] (or a dict of such per stream) -> {head: [N, V, C]}."""
    if isinstance(views, Mapping):
        views = {m: np.asarray(x, np.float32) for m, x in views.items()}
        n, v = next(iter(views.values())).shape[:2]
        flat = {m: x.reshape(n * v, *x.shape[2:]) for m, x in views.items()}
        take = lambda start: {m: x[start:start + batch_size] for m, x in flat.items()}  # noqa: E731
    else:
        views = np.asarray(views, np.float32)
        n, v = views.shape[:2]
        flat = views.reshape(n * v, *views.shape[2:])
        take = lambda start: flat[start:start + batch_size]  # noqa: E731
    chunks: dict[str, list] = {}
    for start in range(0, n * v, batch_size):
        out = model(take(start), training=False)
        out = out if isinstance(out, dict) else {"logits": out}
        for head, value in out.items():
            chunks.setdefault(head, []).append(np.asarray(value, np.float32))
    return {h: np.concatenate(c).reshape(n, v, -1) for h, c in chunks.items()}


def check_missing(model, missing: Iterable[str] | None) -> tuple[str, ...]:
    """The streams to evaluate as missing, checked against the model's: never all of them."""
    names = list(model.input_shapes)
    missing = tuple(dict.fromkeys(missing or ()))
    unknown = [m for m in missing if m not in names]
    if unknown:
        raise ConfigError(f"missing modality {unknown[0]!r} is not a stream of this model ({', '.join(names)})")
    if missing and set(missing) == set(names):
        raise ConfigError(f"every stream of the model ({', '.join(names)}) is marked missing; keep at least one")
    return missing


def with_missing(model, views, missing: Iterable[str]):
    """The views as the model takes them, each stream in `missing` replaced by `missing_input` zeros."""
    from mtv.data.streams import select_streams
    from mtv.models.missing import missing_input

    missing = check_missing(model, missing)
    names = list(model.input_shapes)
    if not missing:
        return select_streams(views, names, where="the evaluation data")
    present = views if isinstance(views, Mapping) else {next(m for m in names if m not in missing): views}
    lead = np.shape(next(iter(present.values())))[:2]
    full = {m: (missing_input((*lead, *model.input_shapes[m])) if m in missing else present[m]) for m in names}
    return select_streams(full, names, where="the evaluation data")


def evaluate(model, batches: Iterable, *, rule: str = "logits_mean", batch_size: int = 8,
             label_heads: Mapping[str, str] | None = None, missing: Iterable[str] = ()) -> EvalResult:
    """Scores every example of `batches` and computes metrics.

    batches: (views float [B, V, T, H, W, 3] or a dict of them per stream, labels or None, ids [B]) tuples,
      labels being one-hot [B, C] for a single head or {label name: [B, C]}; what `mtv.data.tfrecord.
      make_dataset(is_train=False, with_ids=True)` yields. label_heads maps label names to model heads
      (default: 'label' -> the single head, other names to the heads of the same name).
    missing: streams to score as missing (`with_missing`); the batches need not hold them.
    """
    heads = head_names(model)
    ids, outputs, labels, num_views = [], {}, {}, 0
    kind = numeric.view_score_kind(rule)  # an unknown rule fails before any model call
    missing = check_missing(model, missing)
    for views, y, batch_ids in batches:
        views = with_missing(model, views, missing)
        num_views = np.shape(next(iter(views.values())) if isinstance(views, Mapping) else views)[1]
        scores = score_views(model, views, batch_size)
        for head, value in scores.items():
            outputs.setdefault(head, []).append(combine_views(value, rule)[0])
        ids.extend(x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(batch_ids).tolist())
        if y is not None:
            named = y if isinstance(y, Mapping) else {"label": y}
            for name, value in named.items():
                head = (label_heads or {}).get(name) or (heads[0] if name == "label" and len(heads) == 1 else name)
                labels.setdefault(head, []).append(np.asarray(value).argmax(-1) if np.ndim(value) == 2
                                                   else np.asarray(value))
    if not ids:
        raise DataError("no example could be evaluated (the data is empty or every video was skipped)")
    outputs = {h: np.concatenate(v) for h, v in outputs.items()}
    labels = {h: np.concatenate(v) for h, v in labels.items()} or None
    metrics = compute_metrics(outputs, labels, kind) if labels else {}
    return EvalResult(np.asarray(ids), outputs, kind, labels, metrics, num_views)


# ------------------------------------------------------------------------------------------- data
def _tfrecord_labels(files: list[str]) -> list[str]:
    """Label names present in the first record of the files."""
    import tensorflow as tf

    from mtv.data import tfrecord

    for record in tf.data.TFRecordDataset(files[:1]).take(1):
        try:
            return sorted(tfrecord.parse_example(record.numpy()).labels)
        except DataError:
            return []
    return []


def parse_views(views: str | tuple[int, int]) -> tuple[int, int]:
    """'4x3' -> (4 clips, 3 crops); crops must be 1 or 3."""
    if isinstance(views, tuple):
        clips, crops = views
    else:
        parts = str(views).lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"views must look like CLIPSxCROPS, e.g. '4x3', got {views!r}")
        clips, crops = (int(p) for p in parts)
    if clips < 1 or crops not in (1, 3):
        raise DataError(f"views {views!r}: need at least 1 clip and 1 or 3 spatial crops")
    return clips, crops


def eval_dataset_configs(config: Any = None, model=None, *, clips: int | None = None,
                         crops: int | None = None) -> dict:
    """Test-time preprocessing: the config's dataset_configs, else the model's preset metadata."""
    from mtv.data.preprocessor import VideoPreprocessor, video_input_shape
    from mtv.data.streams import reader_configs

    if config is not None:
        dc = config.get("dataset_configs") or {}
        dc = dict(dc.to_dict() if hasattr(dc, "to_dict") else dc)
    else:
        meta = getattr(model, "metadata", None) or {}
        pre = meta.get("preprocessing") or {}
        num_clips, num_crops = parse_views(meta.get("test_views") or pre.get("test_views") or "1x1")
        spatial = VideoPreprocessor.from_model(model, num_crops=num_crops)
        dc = {"num_frames": video_input_shape(model)[0], "stride": int(meta.get("stride") or pre.get("stride") or 1),
              "min_resize": spatial.min_resize, "crop_size": spatial.crop_size, "num_test_clips": num_clips,
              "do_three_spatial_crops": num_crops == 3, "zero_centering": spatial.zero_centering}
        trained = ((meta.get("config") or {}).get("dataset_configs") or {})
        for stream in ("flow", "audio"):  # how an M&M preset's training read its other streams
            if stream in model.input_shapes and (pre.get(stream) or trained.get(stream)):
                dc[stream] = dict(pre.get(stream) or trained.get(stream))
    if model is not None:
        dc = reader_configs(dc, model.spec["modalities"])
    if clips is not None:
        dc["num_test_clips"] = int(clips)
    if crops is not None:
        if crops not in (1, 3):
            raise ConfigError(f"crops must be 1 or 3, got {crops}")
        dc["do_three_spatial_crops"] = crops == 3
    return dc


def evaluate_data(model, data: str | os.PathLike, *, dataset_configs: Mapping, rule: str = "logits_mean",
                  batch_size: int = 8, label_offset: int = 0, workdir: str | os.PathLike | None = None,
                  progress: bool = False, missing: Iterable[str] = ()) -> EvalResult:
    """Evaluates TFRecords (glob, directory or prefix@N) or a CSV of videos (converted to TFRecords first).

    Every stream of the model is read (audio and flow for the same clips as the RGB views), except those in
    `missing`, which get the missing value instead (`with_missing`).
    """
    from mtv.data import tfrecord
    from mtv.data.streams import reader_configs, reader_modalities

    missing = check_missing(model, missing)
    streams = model.spec["modalities"]
    modalities = reader_modalities(streams, skip=missing)
    skipped_prep = 0
    data = os.fspath(data)
    tmp = None
    if data.endswith(".csv"):
        from mtv.data import prepare

        tmp = tempfile.mkdtemp(prefix="mtv_eval_", dir=workdir)
        result = prepare.prepare(data, tmp, name="eval", min_resize=int(dataset_configs.get("min_resize", 256)),
                                 progress=progress, with_audio="audio" in modalities, with_flow="flow" in modalities)
        skipped_prep = len(result.skipped)
        files = [str(p) for p in result.shards]
    else:
        files = tfrecord.resolve_files(data)
    names = _tfrecord_labels(files)
    heads = head_names(model)
    classes = dict(zip(heads, model.spec.get("class_splits") or [model.spec["num_classes"]], strict=True))
    label_names, num_classes = [], {}
    for name in names:
        head = heads[0] if name == "label" and len(heads) == 1 else name
        if head in classes:
            label_names.append(name)
            num_classes[name] = classes[head]
        else:
            logging.warning("label '%s' in '%s' matches no model head %s; not scored", name, data, heads)
    dc = reader_configs(dataset_configs, streams)
    dc["label_offset"] = label_offset
    counter = tfrecord.SkipCounter()
    ds = tfrecord.make_dataset(files, dataset_configs=dc, is_train=False, batch_size=batch_size,
                               label_names=tuple(label_names), num_classes=num_classes or None,
                               with_ids=True, skip_counter=counter, modalities=modalities)

    def batches():
        for element in ds:
            if label_names:
                x, y, ids = element
                y = {k: v.numpy() for k, v in y.items()} if isinstance(y, Mapping) else {label_names[0]: y.numpy()}
            else:
                x, ids = element
                y = None
            x = {m: v.numpy() for m, v in x.items()} if isinstance(x, Mapping) else x.numpy()
            yield x, y, ids.numpy()

    try:
        result = evaluate(model, batches(), rule=rule, batch_size=batch_size, missing=missing)
    finally:
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    result.skipped = skipped_prep + counter.count
    if result.skipped:
        logging.warning("%d video(s) could not be read and were skipped", result.skipped)
    return result


def write(result: EvalResult, path: str | os.PathLike) -> Path:
    """Writes the per-example scores (keyed by id) with `mtv.epic.results.write_results`."""
    from mtv.epic.results import write_results

    expected = {head: scores.shape[1] for head, scores in result.outputs.items()}  # this model's class counts
    return write_results(path, result.ids, result.outputs, score_kind=result.score_kind, expected=expected)


def format_metrics(result: EvalResult) -> str:
    """A short human-readable summary of the metrics."""
    lines = [f"{len(result.ids)} videos x {result.num_views} views"
             + (f" ({result.skipped} unreadable skipped)" if result.skipped else "")]
    for key, value in result.metrics.items():
        lines.append(f"  {key.replace('_', ' ')}: {value:.2f}")
    if not result.metrics:
        lines.append("  (no labels: scores only)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- loading
def run_config(checkpoint: str | os.PathLike | None) -> str | None:
    """The recorded config.json of a training run given as its workdir or one of its checkpoint files."""
    from mtv.training import checkpoints as ckpt_lib

    if checkpoint is None:
        return None
    path = Path(checkpoint)
    run = path if path.is_dir() else path.parent.parent if ckpt_lib.PATTERN.match(path.name) else None
    if run is not None and ckpt_lib.latest_checkpoint(run) is not None and (run / "config.json").is_file():
        return str(run / "config.json")
    return None


def load_for_eval(*, config: Any = None, checkpoint: str | os.PathLike | None = None, model: str | None = None):
    """A model from a training checkpoint / workdir / Scenic checkpoint / preset (+ config), or a zoo handle."""
    from mtv.io import presets
    from mtv.training import checkpoints as ckpt_lib

    if model is not None:
        from mtv.io.loading import load

        return load(model)
    if checkpoint is None:
        raise ConfigError("give --checkpoint (with --config) or --model")
    path = Path(checkpoint)
    if presets.is_preset(path):
        return presets.load_preset(path)
    ckpt_file = None
    if path.is_dir() and ckpt_lib.latest_checkpoint(path) is not None:
        ckpt_file = ckpt_lib.latest_checkpoint(path)
    elif path.is_file() and ckpt_lib.PATTERN.match(path.name):
        ckpt_file = path
    config = config if config is not None else run_config(path)
    if config is None:
        raise ConfigError(f"--config is needed to build the model of checkpoint '{path}'")
    if ckpt_file is not None:
        from mtv.io.scenic import assign_flax_params
        from mtv.models.builder import build_model
        from mtv.training.trainer import load_train_config

        params, _, meta = ckpt_lib.read_checkpoint(ckpt_file)
        heads = meta.get("heads") or {}
        cfg = load_train_config(config)
        if len(heads) > 1:
            built = build_model(cfg, class_splits=list(heads.values()), split_names=list(heads))
        else:
            built = build_model(cfg, num_classes=int(params["output_projection/bias"].shape[0]))
        assign_flax_params(built, params)
        return built
    from mtv.io.scenic import from_scenic

    return from_scenic(config, path)
