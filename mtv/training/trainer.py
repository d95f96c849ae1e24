"""`mtv.training.trainer`: fine-tune an MTV with Keras `fit` and Scenic's recipe.

Recipe (Scenic's MTV trainer): SGD with momentum 0.9; learning rate `lr_configs` ('constant *
cosine_decay * linear_warmup', warm-up in steps or epochs); global-norm gradient clipping at
`max_grad_norm`; softmax cross-entropy with `label_smoothing`; `mixup.alpha`; stochastic depth and
dropout from the model config (active in training); `l2_decay_factor`. Epic-style multi-head models
average the per-head losses; co-finetuning (`cofinetune=True`) trains one head per dataset on batches
drawn from the datasets by `sampling_weight`.

M&M (a config with `model.modalities`) trains through the same path: the datasets read every stream the model
takes, mixup mixes all streams with the batch's one lambda, and `modality_dropout` ({stream: probability})
replaces whole streams of single examples by the missing value of `mtv.models.missing` (docs/multimodal.md).
`init_from` of an M&M model takes an RGB MTV (checkpoint, run, preset or zoo name) through
`mtv.training.multimodal_init`.

A run lives in `workdir`: `config.json`, `checkpoints/ckpt_<step>.npz` (every `checkpoint_steps`,
atomic), `metrics.jsonl` (one line per step), `tensorboard/` summaries. Started again with the same
command, a run resumes from its newest checkpoint at the same step, with the same data stream.
`config.json` is the run's truth: resuming with a config that differs from it is refused with the list
of changed fields unless `allow_config_change=True` (`mtv train --allow_config_change`); then the new
config is recorded in `config.json` and the old one is kept as `config.before_step_<step>.json`.
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

from mtv.data.datasets import TrainingData, build_datasets
from mtv.data.mixing import check_modality_dropout
from mtv.errors import CheckpointError, ConfigError, DataError
from mtv.io.configs import check_config_fields
from mtv.training import backend
from mtv.training import checkpoints as ckpt_lib
from mtv.training.strategy import distribute, is_chief, make_strategy
from mtv.utils.fileio import atomic_path, writing
from mtv.utils.numeric import top_k

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


# ---------------------------------------------------------------------------------- evaluation
def evaluate_single_view(model, data: TrainingData, batch: int = 32) -> dict[str, float]:
    """Top-1 (and top-5) accuracy in percent of every head on its held-out data, one centre view per clip.

    Keys: 'accuracy' and 'top5' for a single head, '<head>_accuracy' and '<head>_top5' for several.
    """
    from mtv.data.streams import select_streams

    predict = backend.predict_function(model)
    names = list(model.input_shapes)
    results = {}
    for spec, label_map in data.parts:
        for label, head in label_map.items():
            top1, top5, count = 0, 0, 0
            for x, y in spec.eval_batches(batch):
                x = select_streams(x, names, where=f"the held-out data of '{spec.name}'")
                n = len(tf.nest.flatten(x)[0])
                if n < batch:  # pad to the traced batch size
                    x = tf.nest.map_structure(
                        lambda v, n=n: np.concatenate([v, np.zeros((batch - n, *v.shape[1:]), v.dtype)]), x)
                out = predict(x)
                logits = np.asarray(out[head] if isinstance(out, dict) else out)[:n]
                truth = y[label].argmax(-1)
                ranked, _ = top_k(logits, 5)
                top1 += int((ranked[:, 0] == truth).sum())
                top5 += int((ranked[:, :5] == truth[:, None]).any(axis=1).sum())
                count += n
            if count:
                prefix = "" if len(data.heads) == 1 else f"{head}_"
                results[f"{prefix}accuracy"] = 100.0 * top1 / count
                if data.heads[head] > 5:
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
          preset_metadata: dict | None = None, verbose: int = 0, allow_config_change: bool = False) -> TrainResult:
    """Trains (or resumes) the run in `workdir` as `config` says; returns the trained model and logs.

    train_data / eval_data: optional in-memory data instead of the config's dataset, as
      `(clips uint8 [N, T, H, W, 3], labels int [N] or {head: int [N]})` (or a `mtv.data.sources.Source`);
      the 'arrays' dataset of `mtv.data.datasets`.
    videos: source videos for datasets that render clips from videos (camera_motion; default: procedural
      textures).
    export_preset: also save the final model as a preset there (with class names, preprocessing and the
      held-out accuracy in its metadata).
    allow_config_change: resume a run whose recorded `config.json` differs from `config` (otherwise a
      ConfigError lists the changed fields).
    """
    config = load_train_config(config)
    from mtv.long.train_localization import is_localization_config, train_localizer

    if is_localization_config(config):  # an UnLoc-style localizer has its own loop (docs/long_videos.md)
        check_config_fields(config)
        if export_preset or train_data is not None or eval_data is not None:
            raise ConfigError("a localizer (model.localization) trains on its config's untrimmed dataset and is "
                              "loaded from its workdir: export_preset, train_data and eval_data are not supported")
        wanted = strategy if strategy is not None else config.get("strategy", "default")
        if isinstance(wanted, str) and wanted not in ("", "default") or (
                not isinstance(wanted, str) and wanted.num_replicas_in_sync > 1):
            name = wanted if isinstance(wanted, str) else f"with {wanted.num_replicas_in_sync} replicas"
            raise ConfigError(f"a localizer (model.localization) trains on one device; strategy {name} is not "
                              "supported for it (docs/long_videos.md, 'Known gaps')")
        return train_localizer(config, workdir, videos=videos, verbose=verbose,
                               allow_config_change=allow_config_change)
    check_config_fields(config)
    workdir = Path(workdir)
    changed = check_resumed_config(config, workdir, allow_config_change=allow_config_change)
    if isinstance(strategy, str) or strategy is None:
        backend.check_strategy(strategy or config.get("strategy", "default"))
        strategy = make_strategy(strategy or config.get("strategy", "default"))
    chief = is_chief(strategy)
    batch = _positive_int(config, "batch_size")
    if batch % strategy.num_replicas_in_sync:
        raise ConfigError(f"batch_size {batch} is not divisible by the {strategy.num_replicas_in_sync} replicas")
    policy = config.get("mixed_precision") or "float32"
    if policy not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ConfigError(f"config.mixed_precision is {policy!r}; expected 'float32', 'mixed_bfloat16' or "
                          "'mixed_float16'")

    def check_then_mkdir(heads: dict[str, int]) -> None:
        _check_model_config(config, heads)  # before any data is read
        with writing(workdir):
            workdir.mkdir(parents=True, exist_ok=True)

    data = build_datasets(config, workdir, train_data=train_data, eval_data=eval_data, videos=videos,
                          check_heads=check_then_mkdir)
    steps_per_epoch = max(data.num_examples // batch, 1)
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
        return _run(config, workdir, strategy, chief, data, batch, total, steps_per_epoch, every, eval_every,
                    export_preset, preset_metadata, verbose, changed)
    finally:
        keras.mixed_precision.set_global_policy(old_policy)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted field path -> JSON value of a nested dict (lists compared as wholes)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(recorded: dict, config: ml_collections.ConfigDict) -> list[str]:
    """'field: old -> new' for every field where `config` differs from a run's recorded config.json."""
    old, new = _flatten(recorded), _flatten(json.loads(config.to_json()))
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            lines.append(f"{key}: {json.dumps(old.get(key, '<absent>'))} -> {json.dumps(new.get(key, '<absent>'))}")
    return lines


def check_resumed_config(config: ml_collections.ConfigDict, workdir: Path, *,
                         allow_config_change: bool = False) -> list[str]:
    """Refuses to resume `workdir` with a config that differs from its recorded config.json; returns the changes."""
    recorded_file = workdir / "config.json"
    if ckpt_lib.latest_checkpoint(workdir) is None or not recorded_file.is_file():
        return []
    try:
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{recorded_file}: the run's recorded config cannot be read ({err}); restore it or start "
                          "the run in a new --workdir") from None
    changes = config_changes(recorded, config)
    if changes and not allow_config_change:
        listed = "\n  ".join(changes)
        raise ConfigError(f"{workdir} holds a run trained with a different config ({recorded_file}); changed "
                          f"field(s):\n  {listed}\nresume it with the same config, start a new --workdir, or pass "
                          "--allow_config_change (train(..., allow_config_change=True)) to continue with the new one")
    if changes:
        logging.warning("resuming %s with a changed config (allowed): %s", workdir, "; ".join(changes))
    return changes


def _check_model_config(config, heads: dict[str, int]) -> None:
    """Validates the model config for these heads (the same check build_model makes, without weights)."""
    from mtv.models.spec import spec_from_config

    if len(heads) == 1:
        spec = spec_from_config(config, num_classes=next(iter(heads.values())))
    else:
        spec = spec_from_config(config, class_splits=list(heads.values()), split_names=list(heads))
    check_modality_dropout(config.get("modality_dropout"), list(spec["modalities"]))


def _build(config, heads: dict):
    from mtv.models.builder import build_model

    if len(heads) == 1:
        return build_model(config, num_classes=next(iter(heads.values())), seed=int(config.get("rng_seed", 0)))
    return build_model(config, class_splits=list(heads.values()), split_names=list(heads),
                       seed=int(config.get("rng_seed", 0)))


def _write_config(path: Path, config) -> None:
    with writing(path), atomic_path(path) as tmp:
        Path(tmp).write_text(config.to_json(indent=1))


def _run(config, workdir, strategy, chief, data: TrainingData, batch, total, steps_per_epoch, every, eval_every,
         export_preset, preset_metadata, verbose, changed=()) -> TrainResult:
    from mtv.training.init_from import initialize
    from mtv.training.losses import TrainingModel
    from mtv.training.optimizer import make_optimizer
    from mtv.training.schedules import ScenicSchedule, resolve_lr_configs

    lr_cfg = resolve_lr_configs(config.get("lr_configs") or {"base_learning_rate": 0.1},
                                steps_per_epoch=steps_per_epoch, total_steps=total)
    seed = int(config.get("rng_seed", 0))
    with strategy.scope():
        inner = _build(config, data.heads)
        wrapper = TrainingModel(inner, list(data.heads), label_smoothing=config.get("label_smoothing"))
        optimizer = make_optimizer(config, ScenicSchedule(lr_cfg))
        wrapper.compile(optimizer=optimizer, jit_compile=backend.jit_compile(config))
        wrapper.build_now()
        optimizer.build(wrapper.trainable_variables)
    latest = ckpt_lib.latest_checkpoint(workdir)
    if latest is not None:
        meta = ckpt_lib.restore_checkpoint(latest, inner, optimizer)
        start = int(meta["step"])
        logging.info("resuming from %s at step %d of %d", latest, start, total)
        how = f"resumed from step {start}"
        if changed and chief:  # allowed by the caller: config.json records what the run now trains with
            recorded = workdir / "config.json"
            os.replace(recorded, workdir / f"config.before_step_{start}.json")
            _write_config(recorded, config)
    else:
        start = 0
        how = initialize(inner, config)
        logging.info("starting a new run in %s: %s", workdir, how)
        if chief:
            _write_config(workdir / "config.json", config)
    if int(optimizer.iterations.numpy()) != start:
        raise CheckpointError(f"'{latest}': checkpoint step {start} and optimizer iterations "
                              f"{int(optimizer.iterations.numpy())} differ")

    history: list[dict] = []
    meta = {"heads": data.heads, "total_steps": total, "batch_size": batch}

    def eval_fn():
        return evaluate_single_view(inner, data, batch=int(config.get("eval_batch_size", batch)))

    has_eval = data.has_eval
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
            mixup = config.get("mixup") or {}
            alpha = float(mixup.get("alpha") or 0.0) if hasattr(mixup, "get") else 0.0
            drop = check_modality_dropout(config.get("modality_dropout"), inner.modalities)

            def train_batches(input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
                return data.train_dataset(batch, seed=seed, start_step=start, mixup_alpha=alpha,
                                          inputs=inner.input_shapes, modality_dropout=drop,
                                          input_context=input_context)

            dataset = distribute(strategy, train_batches, batch)
            epochs = math.ceil((total - start) / every)
            wrapper.fit(dataset, epochs=epochs, steps_per_epoch=every, callbacks=[logger], verbose=verbose,
                        shuffle=False)
        step = int(optimizer.iterations.numpy())
        if not logger.last_eval and has_eval:
            logger.last_eval = eval_fn()
        logger.save(step)
    finally:
        logger.close()
    skipped = data.skipped
    if skipped:
        logging.warning("%d unreadable example(s) were skipped in all (see the warnings above)", skipped)
    preset = None
    if export_preset and chief and step >= total:
        preset = _export(inner, export_preset, config, data, logger.last_eval, step, preset_metadata)
    return TrainResult(inner, workdir, step, total, start, history, logger.last_eval, skipped, preset)


def _export(model, directory, config, data: TrainingData, evaluation, step, extra) -> Path:
    from mtv.io.presets import save_preset

    dc = config.get("dataset_configs") or {}
    class_names = config.get("class_names") or data.class_names
    clips, crops = int(dc.get("num_test_clips", 1)), 3 if dc.get("do_three_spatial_crops") else 1
    pre = {"num_frames": int(dc.get("num_frames", 32)), "stride": int(dc.get("stride", 2)),
           "min_resize": int(dc.get("min_resize", 256)), "crop_size": int(dc.get("crop_size", 224)),
           "clips": clips, "crops": crops, "zero_centering": bool(dc.get("zero_centering", True)),
           "value_range": [-1.0, 1.0], "channel_order": "RGB"}
    for stream in ("flow", "audio"):  # M&M: how the other streams were read (mtv evaluate reads them so)
        if stream in model.input_shapes and dc.get(stream):
            pre[stream] = dict(dc[stream].to_dict() if hasattr(dc[stream], "to_dict") else dc[stream])
    accuracy = {}
    if "accuracy" in evaluation:
        accuracy = {"top1": round(evaluation["accuracy"], 2)}
        if "top5" in evaluation:
            accuracy["top5"] = round(evaluation["top5"], 2)
        accuracy["source"] = f"measured by mtv train after {step} steps: one centre view per clip on {data.held_out}"
    metadata = {"name": config.get("experiment_name"), "class_names": list(class_names) if class_names else None,
                "num_frames": pre["num_frames"], "stride": pre["stride"], "test_views": f"{clips}x{crops}",
                "preprocessing": pre, "trained_steps": step, "heads": data.heads, "accuracy": accuracy,
                "dataset": config.get("dataset_name"), "config": json.loads(config.to_json()), **(extra or {})}
    return save_preset(model, directory, metadata=metadata)
