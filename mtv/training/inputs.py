"""Training and evaluation data for `mtv.training.trainer`: one interface over TFRecords, CSVs, arrays and the
generated camera-motion data, plus co-finetuning mixtures.

Every training source yields global batches `(frames float32 [B, T, H, W, 3] in [-1, 1], labels)` where
labels are one-hot float rows `{head: [B, C_head]}`. Batch `s` is a function of `(seed, s)` for array and
generated sources, so a run resumed at step `s` sees exactly the batches an uninterrupted run would.

Which data a config trains on (`config.dataset_name`):
  'video_tfrecord_dataset'  Scenic's: `dataset_configs.base_dir` + `dataset_configs.tables.{train,validation}`
                            (a glob, a directory, or `<prefix>@N`), read by `mtv.data.tfrecord.make_dataset`.
  'video_csv'               `dataset_configs.train_csv` / `eval_csv` (see `mtv.data.prepare`), converted
                            once into TFRecords under `<workdir>/data/` before training starts.
  'camera_motion'           generated clips (`mtv.data.synthetic`), `dataset_configs.synthetic.*`.
Co-finetuning (`config.cofinetune = True`) reads `config.datasets`, a list of dataset entries each with
`name`, `dataset_name`, `dataset_configs` (overrides of the main one), `num_classes` and
`sampling_weight`; the model gets one head per entry, named by `name`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from mtv.errors import ConfigError, DataError


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


# ------------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class Source:
    """A training source: `batches(batch_size, start_step, seed)` and label shapes by name."""

    name: str
    classes: dict[str, int]  # label name -> classes
    num_examples: int | None
    make: Callable[[int, int, int], tf.data.Dataset]  # (batch_size, start_step, seed) -> dataset
    skip_counter: Any = None

    def batches(self, batch_size: int, start_step: int, seed: int) -> tf.data.Dataset:
        """Infinite global batches from step `start_step` on."""
        return self.make(batch_size, start_step, seed)


def _step_dataset(batch_at: Callable[[int], tuple], signature: tuple, start_step: int) -> tf.data.Dataset:
    """Batches computed on the host from their step number, in order, two at a time."""
    flat_sig = tf.nest.flatten(signature)

    def fetch(step):
        values = tf.numpy_function(lambda s: tf.nest.flatten(batch_at(int(s))), [step],
                                   [s.dtype for s in flat_sig], stateful=False)
        for value, spec in zip(values, flat_sig, strict=True):
            value.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(signature, values)

    ds = tf.data.Dataset.range(start_step, 2**62)
    return ds.map(fetch, num_parallel_calls=2, deterministic=True).prefetch(2)


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as already normalised."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) * (2.0 / 255.0) - 1.0
    return frames.astype(np.float32)


def one_hot(labels: np.ndarray, num_classes: int, name: str = "label") -> np.ndarray:
    """int [N] (or one-hot [N, C]) -> float32 [N, C]; a label outside [0, C) is a DataError."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise DataError(f"labels '{name}' have {labels.shape[1]} columns; expected {num_classes} classes")
        return labels.astype(np.float32)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"label '{name}' of example {int(bad[0])} is {int(labels[bad[0]])}, outside the "
                        f"{num_classes} classes [0, {num_classes}) ({bad.size} such examples)")
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels.astype(np.int64)] = 1.0
    return out


def array_source(frames: np.ndarray, labels: Mapping[str, np.ndarray] | np.ndarray,
                 num_classes: Mapping[str, int] | int, *, name: str = "data", random_flip: bool = False) -> Source:
    """In-memory clips (uint8 or [-1, 1] float [N, T, H, W, 3]) with int or one-hot labels.

    Examples are visited in a fresh permutation every epoch, drawn from `(seed, epoch)`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise DataError(f"training clips must be [N, T, H, W, 3], got shape {list(frames.shape)}")
    if not isinstance(labels, Mapping):
        labels = {"label": labels}
    if isinstance(num_classes, int):
        num_classes = dict.fromkeys(labels, num_classes)
    hot = {k: one_hot(v, num_classes[k], k) for k, v in labels.items()}
    count = len(frames)
    for key, value in hot.items():
        if len(value) != count:
            raise DataError(f"{count} clips but {len(value)} '{key}' labels")
    if count == 0:
        raise DataError(f"dataset '{name}' is empty")

    def make(batch_size: int, start_step: int, seed: int) -> tf.data.Dataset:
        def batch_at(step: int):
            positions = step * batch_size + np.arange(batch_size)
            epochs, offsets = np.divmod(positions, count)
            idx = np.empty(batch_size, np.int64)
            for epoch in np.unique(epochs):
                order = np.random.default_rng([seed, int(epoch)]).permutation(count)
                idx[epochs == epoch] = order[offsets[epochs == epoch]]
            x = normalize_frames(frames[idx])
            if random_flip:
                flip = np.random.default_rng([seed, 1 << 20, step]).random(batch_size) < 0.5
                x[flip] = x[flip, :, :, ::-1]
            return x, {k: v[idx] for k, v in hot.items()}

        sig = (tf.TensorSpec((batch_size, *frames.shape[1:]), tf.float32),
               {k: tf.TensorSpec((batch_size, v.shape[1]), tf.float32) for k, v in hot.items()})
        return _step_dataset(batch_at, sig, start_step)

    return Source(name, {k: v.shape[1] for k, v in hot.items()}, count, make)


def camera_motion_source(options: Mapping, *, num_frames: int, size: int, name: str = "camera_motion",
                         videos: str | None = None) -> Source:
    """Freshly generated camera-motion clips: batch `s` is rendered from `(seed, s)`."""
    from mtv.data import synthetic
    options = dict(options or {})
    sources = _synthetic_sources(options, videos, split="train")
    still = float(options.get("still_fraction", 0.3))

    def make(batch_size: int, start_step: int, seed: int) -> tf.data.Dataset:
        def batch_at(step: int):
            clips, labels = synthetic.generate(batch_size, sources=sources, num_frames=num_frames, size=size,
                                               seed=[seed, step], still_fraction=still)
            return normalize_frames(clips), {"label": one_hot(labels, len(synthetic.CLASSES))}

        sig = (tf.TensorSpec((batch_size, num_frames, size, size, 3), tf.float32),
               {"label": tf.TensorSpec((batch_size, len(synthetic.CLASSES)), tf.float32)})
        return _step_dataset(batch_at, sig, start_step)

    return Source(name, {"label": len(synthetic.CLASSES)}, int(options.get("num_train", 6500)), make)


def _synthetic_sources(options: Mapping, videos: str | None, split: str) -> list[np.ndarray]:
    from mtv.data import synthetic
    videos = options.get("videos") or videos
    min_resize = int(options.get("source_min_resize", 128))
    if videos and Path(videos).exists():
        sources = synthetic.video_sources(videos, split=split, min_resize=min_resize)
    else:
        if videos:
            logging.warning("camera-motion source videos '%s' not found: using procedural textures", videos)
        sources = []
    if not sources or options.get("textures", 0):
        sources = sources + synthetic.texture_sources(int(options.get("textures", 0) or 8),
                                                      seed=1 if split == "train" else 2)
    return sources


def camera_motion_eval(options: Mapping, *, num_frames: int, size: int, videos: str | None = None,
                       count: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out generated clips (uint8) and int labels, from the held-out source video."""
    from mtv.data import synthetic
    options = dict(options or {})
    sources = _synthetic_sources(options, videos, split="heldout")
    count = int(count or options.get("num_eval", 390))
    seed = int(options.get("eval_seed", 12345) if seed is None else seed)
    return synthetic.generate(count, sources=sources, num_frames=num_frames, size=size, seed=seed,
                              still_fraction=float(options.get("still_fraction", 0.3)))


def tfrecord_source(pattern, dataset_configs: Any, classes: Mapping[str, int], *, name: str = "data",
                    num_examples: int | None = None) -> Source:
    """Training batches from TFRecords via `mtv.data.tfrecord.make_dataset`; skipped records are counted."""
    from mtv.data import tfrecord

    files = tfrecord.resolve_files(pattern)
    counter = tfrecord.SkipCounter()
    label_names = tuple(classes)

    def make(batch_size: int, start_step: int, seed: int) -> tf.data.Dataset:
        ds = tfrecord.make_dataset(files, dataset_configs=_plain(dataset_configs), is_train=True,
                                   batch_size=batch_size, label_names=label_names, num_classes=dict(classes),
                                   seed=seed, skip_counter=counter)
        if len(label_names) == 1:
            ds = ds.map(lambda x, y: (x, {label_names[0]: y}))
        # Records are read in a seeded order, so skipping the consumed batches resumes the same stream.
        return ds.skip(start_step) if start_step else ds

    if num_examples is None:
        num_examples = tfrecord.count_records(files)
    return Source(name, dict(classes), num_examples, make, skip_counter=counter)


# ------------------------------------------------------------------------------- configs -> data
def _classes_for(dataset_configs: Mapping, num_classes: int | None) -> dict[str, int]:
    splits, names = dataset_configs.get("class_splits"), dataset_configs.get("split_names")
    if splits:
        return dict(zip(names, [int(s) for s in splits], strict=True))
    if num_classes is None:
        num_classes = dataset_configs.get("num_classes")
    if not num_classes:
        raise ConfigError("dataset_configs.num_classes is missing (or class_splits/split_names for several heads)")
    return {"label": int(num_classes)}


def _prepare_csv(csv_path: str, workdir: str | os.PathLike, split: str, dataset_configs: Mapping,
                 classes: Mapping[str, int]) -> tuple[list[str], int, list]:
    """Converts a CSV into TFRecords under `<workdir>/data/` once; returns (files, examples, skipped)."""
    from mtv.data import prepare as prepare_lib

    out = Path(workdir) / "data"
    done = out / f"{split}-done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("csv") == str(csv_path):
            return info["files"], info["num_examples"], info["skipped"]
    num_classes = classes.get("label")
    result = prepare_lib.prepare(csv_path, out, name=split, num_classes=num_classes,
                                 video_root=dataset_configs.get("video_root"),
                                 min_resize=int(dataset_configs.get("min_resize", 256)), progress=False)
    for head, count in classes.items():
        if head != "label" and prepare_lib.EPIC_NUM_CLASSES.get(head, count) != count:
            raise ConfigError(f"head '{head}' has {count} classes but the CSV's Epic labels have "
                              f"{prepare_lib.EPIC_NUM_CLASSES[head]}")
    info = {"csv": str(csv_path), "files": [str(p) for p in result.shards], "num_examples": result.num_written,
            "skipped": [list(s) for s in result.skipped]}
    done.write_text(json.dumps(info, indent=1))
    return info["files"], info["num_examples"], info["skipped"]


@dataclasses.dataclass
class DataSpec:
    """Everything the trainer needs about one dataset: the train source and the eval arrays or files."""

    name: str
    source: Source
    eval_files: list[str] | None = None  # TFRecords for validation
    eval_arrays: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # uint8 clips, int labels
    skipped: list = dataclasses.field(default_factory=list)  # (video, reason) skipped while preparing


def data_from_config(config: Any, workdir: str | os.PathLike, *, dataset_name: str | None = None,
                     dataset_configs: Any = None, num_classes: int | None = None, name: str = "data",
                     videos: str | None = None) -> DataSpec:
    """The training source and held-out data that a (sub-)config describes."""
    ds_name = dataset_name or config.get("dataset_name")
    dc = _plain(dataset_configs if dataset_configs is not None else config.get("dataset_configs")) or {}
    num_frames, crop = int(dc.get("num_frames", 32)), int(dc.get("crop_size", 224))
    if ds_name == "camera_motion":
        from mtv.data import synthetic
        if num_classes not in (None, len(synthetic.CLASSES)):
            raise ConfigError(f"camera_motion has {len(synthetic.CLASSES)} classes, config says {num_classes}")
        options = dc.get("synthetic") or {}
        source = camera_motion_source(options, num_frames=num_frames, size=crop, name=name, videos=videos)
        clips, labels = camera_motion_eval(options, num_frames=num_frames, size=crop, videos=videos)
        return DataSpec(name, source, eval_arrays=(clips, {"label": labels}))
    classes = _classes_for(dc, num_classes)
    if ds_name == "video_tfrecord_dataset":
        tables = dc.get("tables") or {}
        base = dc.get("base_dir") or ""
        if not tables.get("train"):
            raise ConfigError("dataset_configs.tables.train is missing (a TFRecord glob, directory or name@N)")
        train = os.path.join(base, tables["train"])
        examples = (dc.get("examples_per_subset") or {}).get("train") or None
        source = tfrecord_source(train, dc, classes, name=name, num_examples=examples)
        valid = tables.get("validation")
        return DataSpec(name, source, eval_files=_files_or_none(os.path.join(base, valid)) if valid else None)
    if ds_name == "video_csv":
        if not dc.get("train_csv"):
            raise ConfigError("dataset_name 'video_csv' needs dataset_configs.train_csv")
        files, count, skipped = _prepare_csv(dc["train_csv"], workdir, f"{name}-train", dc, classes)
        source = tfrecord_source(files, dc, classes, name=name, num_examples=count)
        eval_files = None
        if dc.get("eval_csv"):
            eval_files, _, more = _prepare_csv(dc["eval_csv"], workdir, f"{name}-eval", dc, classes)
            skipped = skipped + more
        return DataSpec(name, source, eval_files=eval_files, skipped=skipped)
    raise ConfigError(f"config.dataset_name is {ds_name!r}; mtv trains on 'video_tfrecord_dataset', "
                      "'video_csv' or 'camera_motion' (or pass train_data= to mtv.training.trainer.train)")


def _files_or_none(pattern: str) -> list[str] | None:
    from mtv.data import tfrecord

    try:
        return tfrecord.resolve_files(pattern)
    except DataError as e:
        logging.warning("no validation data: %s", e)
        return None


# ------------------------------------------------------------------------------- heads & mixing
def to_heads(ds: tf.data.Dataset, label_map: Mapping[str, str], heads: Mapping[str, int],
             single_head: bool) -> tf.data.Dataset:
    """Renames a source's labels to model heads, zero-fills heads it has no labels for."""

    def convert(x, labels):
        out = {}
        for head, count in heads.items():
            source_name = next((s for s, h in label_map.items() if h == head), None)
            if source_name is not None:
                out[head] = labels[source_name]
            else:
                out[head] = tf.zeros([tf.shape(x)[0], count], tf.float32)
        return x, (out[next(iter(heads))] if single_head else out)

    return ds.map(convert)


def mixture(datasets: Sequence[tf.data.Dataset], weights: Sequence[float], *, seed: int,
            start_step: int) -> tf.data.Dataset:
    """Co-finetuning: batch `s` comes from dataset i with probability weights[i], drawn from (seed, s)."""
    weights = np.asarray(weights, np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"sampling weights must be >= 0 and not all 0, got {weights.tolist()}")
    probs = weights / weights.sum()

    def choice(step):
        return np.int64(np.random.default_rng([seed, 7, int(step)]).choice(len(probs), p=probs))

    choices = tf.data.Dataset.range(start_step, 2**62).map(
        lambda s: tf.reshape(tf.numpy_function(choice, [s], tf.int64, stateful=False), []))
    return tf.data.Dataset.choose_from_datasets(list(datasets), choices)


def mixup_batches(ds: tf.data.Dataset, alpha: float, *, seed: int, start_step: int) -> tf.data.Dataset:
    """Scenic's mixup of each batch with its reverse (one lambda ~ Beta(alpha, alpha) per batch)."""
    from mtv.data.transforms import mixup_tf

    steps = tf.data.Dataset.range(start_step, 2**62)

    def mix(batch, step):
        x, y = batch
        seed_pair = tf.stack([tf.constant(seed, tf.int64), step])
        mixed_x, mixed_y, _ = mixup_tf(x, y, alpha, seed=tf.cast(seed_pair % (2**31 - 1), tf.int32))
        return mixed_x, mixed_y

    return tf.data.Dataset.zip((ds, steps)).map(mix)
