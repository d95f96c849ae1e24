"""`mtv.training.trainer`: fine-tune an MTV with Keras `fit` and Scenic's recipe.

Recipe (Scenic's MTV trainer): SGD with momentum 0.9; learning rate `lr_configs` ('constant *
cosine_decay * linear_warmup', warm-up in steps or epochs); global-norm gradient clipping at
`max_grad_norm`; softmax cross-entropy with `label_smoothing`; `mixup.alpha`; stochastic depth and
dropout from the model config (active in training); `l2_decay_factor`. Epic-style multi-head models
average the per-head losses; co-finetuning (`cofinetune=True`) trains one head per dataset on batches
drawn from the datasets by `sampling_weight`.

A run lives in `workdir`: `config.json`, `checkpoints/ckpt_<step>.npz` (every `checkpoint_steps`,
atomic), `metrics.jsonl` (one line per step), `tensorboard/` summaries. Started again with the same
command, a run resumes from its newest checkpoint at the same step, with the same data stream.
`mixed_precision='mixed_bfloat16'` trains in bfloat16 with float32 weights. `strategy` picks a
tf.distribute strategy; `batch_size` is the global batch, split evenly over the replicas, and the
learning rate is not rescaled (as Scenic), so any number of replicas follows the same curve.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from mtv.errors import CheckpointError, ConfigError, DataError
from mtv.training import checkpoints as ckpt_lib
from mtv.training import inputs as inputs_lib
from mtv.training.strategy import distribute, is_chief, make_strategy

_STOP = threading.Event()  # set by SIGTERM: checkpoint at the next step and stop


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    model: keras.Model
    workdir: Path
    step: int
    total_steps: int
    start_step: int
    history: list[dict]
    eval: dict[str, float]
    skipped: int
    preset: Path | None = None


# ------------------------------------------------------------------------------------- config
def load_train_config(config: Any) -> ml_collections.ConfigDict:
    """A private, unlocked copy of a config given as ConfigDict, dict, file path or experiment name."""
    if isinstance(config, (str, os.PathLike)):
        from mtv.io.configs import load_config

        config = load_config(os.fspath(config))
    elif isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    elif not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config must be a ConfigDict, dict, path or experiment name, got {type(config).__name__}")
    return copy.deepcopy(config)


def _positive_int(config, key: str, default=None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")
    return int(value)


def _heads_and_data(config, workdir: Path, train_data, eval_data, videos: str | None):
    """(heads {name: classes}, [(DataSpec, {source label -> head})], weights) for the run."""
    if config.get("cofinetune"):
        entries = config.get("datasets")
        if not entries:
            raise ConfigError("cofinetune=True needs config.datasets: a list of {name, dataset_name, "
                              "dataset_configs, num_classes, sampling_weight}")
        heads, specs, weights = {}, [], []
        base = inputs_lib._plain(config.get("dataset_configs")) or {}
        for i, entry in enumerate(entries):
            entry = inputs_lib._plain(entry)
            name = entry.get("name") or f"dataset{i}"
            if name in heads:
                raise ConfigError(f"config.datasets: name '{name}' is used twice; each dataset needs its own head")
            dc = {**base, **(entry.get("dataset_configs") or {})}
            for key in ("class_splits", "split_names"):
                dc.pop(key, None)
            spec = inputs_lib.data_from_config(config, workdir, dataset_name=entry.get("dataset_name"),
                                               dataset_configs=dc, num_classes=entry.get("num_classes"),
                                               name=name, videos=videos)
            if len(spec.source.classes) != 1:
                raise ConfigError(f"co-finetuning dataset '{name}' must have one label, "
                                  f"got {list(spec.source.classes)}")
            heads[name] = next(iter(spec.source.classes.values()))
            specs.append((spec, {next(iter(spec.source.classes)): name}))
            weights.append(float(entry.get("sampling_weight", 1.0)))
        return heads, specs, weights
    if train_data is not None:
        spec = _data_from_arrays(config, train_data, eval_data)
    else:
        spec = inputs_lib.data_from_config(config, workdir, videos=videos)
    classes = spec.source.classes
    return dict(classes), [(spec, {k: k for k in classes})], [1.0]


def _data_from_arrays(config, train_data, eval_data) -> inputs_lib.DataSpec:
    """`train(..., train_data=(clips, labels))` for notebooks; labels int [N] or {head: int [N]}."""
    if isinstance(train_data, inputs_lib.Source):
        source = train_data
    else:
        clips, labels = train_data
        dc = config.get("dataset_configs") or {}
        classes = inputs_lib._classes_for(inputs_lib._plain(dc), None)
        if not isinstance(labels, dict):
            labels = {next(iter(classes)): labels}
        source = inputs_lib.array_source(clips, labels, classes, random_flip=bool(dc.get("random_flip", False)))
    eval_arrays = None
    if eval_data is not None:
        clips, labels = eval_data
        eval_arrays = (clips, labels if isinstance(labels, dict) else {next(iter(source.classes)): labels})
    return inputs_lib.DataSpec("data", source, eval_arrays=eval_arrays)


# ---------------------------------------------------------------------------------- evaluation
def _eval_batches(spec: inputs_lib.DataSpec, config, batch: int):
    """Single-view (centre clip) evaluation batches (float frames, {label: one-hot}) of a DataSpec."""
    if spec.eval_arrays is not None:
        clips, labels = spec.eval_arrays
        hot = {k: inputs_lib.one_hot(v, spec.source.classes[k], k) for k, v in labels.items()}
        for start in range(0, len(clips), batch):
            yield (inputs_lib.normalize_frames(clips[start:start + batch]),
                   {k: v[start:start + batch] for k, v in hot.items()})
    elif spec.eval_files:
        from mtv.data import tfrecord

        dc = dict(inputs_lib._plain(config.get("dataset_configs")) or {})
        dc.update(num_test_clips=1, do_three_spatial_crops=False)
        ds = tfrecord.make_dataset(spec.eval_files, dataset_configs=dc, is_train=False, batch_size=batch,
                                   label_names=tuple(spec.source.classes), num_classes=spec.source.classes)
        for x, y in ds:
            y = y if isinstance(y, dict) else {next(iter(spec.source.classes)): y}
            yield x.numpy()[:, 0], {k: v.numpy() for k, v in y.items()}


def evaluate_single_view(model, specs, heads: dict, config, batch: int = 32) -> dict[str, float]:
    """Top-1 (and top-5) accuracy in percent of every head on its held-out data, one centre view per clip.

    Keys: 'accuracy' and 'top5' for a single head, '<head>_accuracy' and '<head>_top5' for several.
    """
    names = list(heads)
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    results = {}
    for spec, label_map in specs:
        for label, head in label_map.items():
            top1, top5, count = 0, 0, 0
            for x, y in _eval_batches(spec, config, batch):
                n = len(x)
                if n < batch:  # pad to the traced batch size
                    x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
                out = predict(tf.constant(x))
                logits = np.asarray(out[head] if isinstance(out, dict) else out)[:n]
                truth = y[label].argmax(-1)
                ranked = np.argsort(-logits, axis=-1)
                top1 += int((ranked[:, 0] == truth).sum())
                top5 += int((ranked[:, :5] == truth[:, None]).any(axis=1).sum())
                count += n
            if count:
                prefix = "" if len(names) == 1 else f"{head}_"
                results[f"{prefix}accuracy"] = 100.0 * top1 / count
                if heads[head] > 5:
                    results[f"{prefix}top5"] = 100.0 * top5 / count
    return results


# ----------------------------------------------------------------------------------- callbacks
class _RunLogger(keras.callbacks.Callback):
    """Per-step loss and learning rate, checkpoints, summaries, evaluation and clean stops."""

    def __init__(self, *, workdir: Path, inner, lr_cfg, total: int, chief: bool, eval_fn, eval_every: int,
                 keep: int, meta: dict, history: list):
        super().__init__()
        self.workdir, self.inner, self.lr_cfg, self.total = workdir, inner, lr_cfg, total
        self.chief, self.eval_fn, self.eval_every, self.keep, self.meta = chief, eval_fn, eval_every, keep, meta
        self.history = history
        self.last_saved = -1
        self.last_eval: dict[str, float] = {}
        self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard")) if chief else None
        self._jsonl = open(workdir / "metrics.jsonl", "a") if chief else None  # noqa: SIM115
        self._prev_mean, self._epochs = 0.0, 0

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._prev_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        from mtv.training.schedules import lr_value

        step = self._step()
        mean = float(np.asarray((logs or {}).get("loss", np.nan)))
        loss = mean * (batch + 1) - self._prev_mean * batch  # Keras reports the running mean of the epoch
        self._prev_mean = mean
        record = {"step": step, "loss": loss, "learning_rate": float(lr_value(self.lr_cfg, step - 1))}
        self.history.append(record)
        if self.chief:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            with self._writer.as_default(step=step):
                _scalar("train/loss", loss)
                _scalar("train/learning_rate", record["learning_rate"])
        if not math.isfinite(loss):
            raise DataError(f"the training loss became {loss} at step {step}; lower lr_configs.base_learning_rate "
                            "or check the data")
        if step >= self.total or _STOP.is_set():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        self._epochs += 1
        if self.eval_fn is not None and (self._epochs % self.eval_every == 0 or step >= self.total):
            self.last_eval = self.eval_fn()
            logging.info("step %d: held-out %s", step, self.last_eval)
        if self.chief:
            with self._writer.as_default(step=step):
                for key, value in (logs or {}).items():
                    if key != "loss":
                        _scalar(f"train/{key}", float(np.asarray(value)))
                for key, value in self.last_eval.items():
                    _scalar(f"eval/{key}", value)
            self._writer.flush()
        self.save(step)

    def save(self, step: int) -> None:
        if step == self.last_saved:
            return
        self.last_saved = step
        if self.chief:
            meta = {**self.meta, "eval": self.last_eval, "time": time.time()}
            ckpt_lib.save_checkpoint(self.workdir, step, self.inner, self.model.optimizer, meta=meta, keep=self.keep)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()


_SCALAR_META = None


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar written with core TF only (the tensorboard package is not a dependency)."""
    global _SCALAR_META
    if _SCALAR_META is None:
        from tensorflow.core.framework import summary_pb2

        _SCALAR_META = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=_SCALAR_META)


def _install_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: _STOP.set())


# ---------------------------------------------------------------------------------------- train
def train(config: Any, workdir: str | os.PathLike, *, strategy: tf.distribute.Strategy | str | None = None,
          train_data=None, eval_data=None, videos: str | None = None, export_preset: str | os.PathLike | None = None,
          preset_metadata: dict | None = None, verbose: int = 0) -> TrainResult:
    """Trains (or resumes) the run in `workdir` as `config` says; returns the trained model and logs.

    train_data / eval_data: optional in-memory data instead of the config's dataset, as
      `(clips uint8 [N, T, H, W, 3], labels int [N] or {head: int [N]})` (or an `inputs.Source`).
    videos: source videos for the generated camera-motion data (default: none, procedural textures).
    export_preset: also save the final model as a preset there (with class names, preprocessing and the
      held-out accuracy in its metadata).
    """
    config = load_train_config(config)
    workdir = Path(workdir)
    if isinstance(strategy, str) or strategy is None:
        strategy = make_strategy(strategy or config.get("strategy", "default"))
    chief = is_chief(strategy)
    batch = _positive_int(config, "batch_size")
    if batch % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {batch} is not divisible by the {strategy.num_replicas_in_sync} replicas")
    policy = config.get("mixed_precision") or "float32"
    if policy not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ConfigError(f"config.mixed_precision is {policy!r}; expected 'float32', 'mixed_bfloat16' or "
                          "'mixed_float16'")
    from mtv.models.spec import spec_from_config

    if not config.get("cofinetune"):  # check the model config before any data is read
        dc = inputs_lib._plain(config.get("dataset_configs")) or {}
        if dc.get("class_splits") or dc.get("num_classes") or config.get("dataset_name") == "camera_motion":
            spec_from_config(config, num_classes=13 if config.get("dataset_name") == "camera_motion" else None)
    workdir.mkdir(parents=True, exist_ok=True)
    videos = videos or ((inputs_lib._plain(config.get("dataset_configs")) or {}).get("synthetic") or {}).get("videos")
    heads, specs, weights = _heads_and_data(config, workdir, train_data, eval_data, videos)
    head_names = list(heads)
    single = len(heads) == 1
    skipped_prep = sum(len(spec.skipped) for spec, _ in specs)

    num_examples = sum(spec.source.num_examples or 0 for spec, _ in specs)
    steps_per_epoch = max(num_examples // batch, 1)
    if config.get("num_training_steps"):
        total = _positive_int(config, "num_training_steps")
    else:
        total = _positive_int(config, "num_training_epochs") * steps_per_epoch
    every = int(config.get("checkpoint_steps") or config.get("log_eval_steps") or min(steps_per_epoch, total))
    eval_steps = int(config.get("log_eval_steps") or every)
    eval_every = max(1, eval_steps // every)

    old_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _run(config, workdir, strategy, chief, heads, head_names, single, specs, weights, batch, total,
                    steps_per_epoch, every, eval_every, skipped_prep, export_preset, preset_metadata, verbose)
    finally:
        keras.mixed_precision.set_global_policy(old_policy)


def _build(config, heads: dict, single: bool):
    from mtv.models.builder import build_model

    if single:
        return build_model(config, num_classes=next(iter(heads.values())), seed=int(config.get("rng_seed", 0)))
    return build_model(config, class_splits=list(heads.values()), split_names=list(heads),
                       seed=int(config.get("rng_seed", 0)))


def _run(config, workdir, strategy, chief, heads, head_names, single, specs, weights, batch, total,
         steps_per_epoch, every, eval_every, skipped_prep, export_preset, preset_metadata, verbose) -> TrainResult:
    from mtv.training.init_from import initialize
    from mtv.training.losses import TrainingModel
    from mtv.training.optimizer import make_optimizer
    from mtv.training.schedules import ScenicSchedule, resolve_lr_configs

    lr_cfg = resolve_lr_configs(config.get("lr_configs") or {"base_learning_rate": 0.1},
                                steps_per_epoch=steps_per_epoch, total_steps=total)
    seed = int(config.get("rng_seed", 0))
    with strategy.scope():
        inner = _build(config, heads, single)
        wrapper = TrainingModel(inner, head_names, label_smoothing=config.get("label_smoothing"))
        optimizer = make_optimizer(config, ScenicSchedule(lr_cfg))
        wrapper.compile(optimizer=optimizer, jit_compile=bool(config.get("jit_compile", False)))
        wrapper.build_now()
        optimizer.build(wrapper.trainable_variables)
    latest = ckpt_lib.latest_checkpoint(workdir)
    if latest is not None:
        meta = ckpt_lib.restore_checkpoint(latest, inner, optimizer)
        start = int(meta["step"])
        logging.info("resuming from %s at step %d of %d", latest, start, total)
        how = f"resumed from step {start}"
    else:
        start = 0
        how = initialize(inner, config)
        logging.info("starting a new run in %s: %s", workdir, how)
        if chief:
            (workdir / "config.json").write_text(config.to_json(indent=1))
    if int(optimizer.iterations.numpy()) != start:
        raise CheckpointError(f"'{latest}': checkpoint step {start} and optimizer iterations "
                              f"{int(optimizer.iterations.numpy())} differ")

    history: list[dict] = []
    meta = {"heads": heads, "total_steps": total, "batch_size": batch}

    def eval_fn():
        return evaluate_single_view(inner, specs, heads, config, batch=int(config.get("eval_batch_size", batch)))

    has_eval = any(s.eval_arrays is not None or s.eval_files for s, _ in specs)
    logger = _RunLogger(workdir=workdir, inner=inner, lr_cfg=lr_cfg, total=total, chief=chief,
                        eval_fn=eval_fn if has_eval else None, eval_every=eval_every,
                        keep=int(config.get("max_checkpoint_keep", 3)), meta=meta, history=history)
    logger.set_model(wrapper)
    if latest is not None:
        logger.last_saved = start  # that checkpoint exists already
    _STOP.clear()
    _install_sigterm()
    try:
        if start < total:
            dataset = _train_dataset(config, specs, heads, weights, batch, seed, start, single)
            dataset = distribute(strategy, dataset, batch)
            epochs = math.ceil((total - start) / every)
            wrapper.fit(dataset, epochs=epochs, steps_per_epoch=every, callbacks=[logger], verbose=verbose,
                        shuffle=False)
        step = int(optimizer.iterations.numpy())
        if not logger.last_eval and has_eval:
            logger.last_eval = eval_fn()
        logger.save(step)
    finally:
        logger.close()
    skipped = skipped_prep + sum(int(getattr(s.source.skip_counter, "count", 0) or 0) for s, _ in specs)
    if skipped:
        logging.warning("%d unreadable example(s) were skipped in all (see the warnings above)", skipped)
    preset = None
    if export_preset and chief and step >= total:
        preset = _export(inner, export_preset, config, heads, logger.last_eval, step, preset_metadata)
    return TrainResult(inner, workdir, step, total, start, history, logger.last_eval, skipped, preset)


def _train_dataset(config, specs, heads, weights, batch, seed, start, single) -> tf.data.Dataset:
    datasets = []
    for i, (spec, label_map) in enumerate(specs):
        ds = spec.source.batches(batch, start, seed + 1000 * i)
        datasets.append(inputs_lib.to_heads(ds, label_map, heads, single))
    if len(datasets) == 1:
        dataset = datasets[0]
    else:
        dataset = inputs_lib.mixture(datasets, weights, seed=seed, start_step=start)
    mixup = config.get("mixup") or {}
    alpha = float(mixup.get("alpha") or 0.0) if hasattr(mixup, "get") else 0.0
    if alpha > 0:
        dataset = inputs_lib.mixup_batches(dataset, alpha, seed=seed, start_step=start)
    return dataset.prefetch(2)


def _export(model, directory, config, heads, evaluation, step, extra) -> Path:
    from mtv.io.presets import save_preset

    dc = inputs_lib._plain(config.get("dataset_configs")) or {}
    class_names = config.get("class_names")
    if config.get("dataset_name") == "camera_motion" and not class_names:
        from mtv.data import synthetic
        class_names = synthetic.class_names()
    clips, crops = int(dc.get("num_test_clips", 1)), 3 if dc.get("do_three_spatial_crops") else 1
    pre = {"num_frames": int(dc.get("num_frames", 32)), "stride": int(dc.get("stride", 2)),
           "min_resize": int(dc.get("min_resize", 256)), "crop_size": int(dc.get("crop_size", 224)),
           "clips": clips, "crops": crops, "zero_centering": bool(dc.get("zero_centering", True)),
           "value_range": [-1.0, 1.0], "channel_order": "RGB"}
    accuracy = {}
    if "accuracy" in evaluation:
        accuracy = {"top1": round(evaluation["accuracy"], 2)}
        if "top5" in evaluation:
            accuracy["top5"] = round(evaluation["top5"], 2)
        held_out = ("generated clips rendered from a video never used in training"
                    if config.get("dataset_name") == "camera_motion" else "the config's validation data")
        accuracy["source"] = f"measured by mtv train after {step} steps: one centre view per clip on {held_out}"
    metadata = {"name": config.get("experiment_name"), "class_names": list(class_names) if class_names else None,
                "num_frames": pre["num_frames"], "stride": pre["stride"], "test_views": f"{clips}x{crops}",
                "preprocessing": pre, "trained_steps": step, "heads": heads, "accuracy": accuracy,
                "dataset": config.get("dataset_name"), "config": json.loads(config.to_json()), **(extra or {})}
    return save_preset(model, directory, metadata=metadata)
