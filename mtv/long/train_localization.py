"""`mtv train` for a localizer (a config with `model.localization`): the UnLoc-style model on untrimmed videos.

The loop: each step draws a batch of sequences (`windows_per_sequence` consecutive windows cut at a random
frame of a random training video, `mtv.long.datasets.sample_sequences`) from a generator seeded by
(rng_seed, step), so a resumed run sees the same data as an uninterrupted one, and takes one
`train_on_batch` step of `LocalizationModel.compute_loss` (focal + tIoU loss) with the classifier's
optimizer and learning-rate schedule (`mtv.training.optimizer`, `mtv.training.schedules`).

The workdir, as for classifiers: `config.json` (the run's truth; a changed config is refused on resume unless
allowed), `checkpoints/ckpt_<step>.npz` (weights, optimizer state, meta; atomic, every `checkpoint_steps`),
`metrics.jsonl` (a line per step; an 'eval' line with held-out mAP after the last step) and
`localizer.json` (class names and the window geometry `mtv localize` / `mtv evaluate` read with the newest
checkpoint, `load_localizer`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from mtv.errors import CheckpointError, ConfigError, DataError
from mtv.utils.fileio import atomic_path, atomic_write_text, writing

INFO_FILE = "localizer.json"


def is_localization_config(config: Any) -> bool:
    """Whether a (ConfigDict or dict) config describes a localizer (has `model.localization`)."""
    model = config.get("model") if hasattr(config, "get") else None
    return bool(model is not None and hasattr(model, "get") and model.get("localization") is not None)


# ------------------------------------------------------------------------------------ checkpoints
def save_state(workdir: Path, step: int, model, optimizer, meta: dict, keep: int = 3) -> Path:
    """Writes `checkpoints/ckpt_<step>.npz` (weights in model order, optimizer variables, meta) atomically."""
    from mtv.training import checkpoints as ckpt_lib

    arrays = {f"weights/{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    for i, var in enumerate(optimizer.variables if optimizer is not None else []):
        arrays[f"opt/{i}"] = np.asarray(var.numpy())
    arrays["meta"] = np.asarray(json.dumps({"step": int(step), "kind": "localizer", **meta}, default=str))
    path = ckpt_lib.checkpoint_dir(workdir) / f"ckpt_{int(step):08d}.npz"
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    for _, old in ckpt_lib.list_checkpoints(workdir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def restore_state(path: Path, model, optimizer=None) -> dict:
    """Loads a localizer checkpoint into `model` (and a built `optimizer`); returns its meta."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            weights = [data[f"weights/{i}"] for i in range(sum(k.startswith("weights/") for k in data.files))]
            opt = [data[f"opt/{i}"] for i in range(sum(k.startswith("opt/") for k in data.files))]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{path}' is not a readable localizer checkpoint: {e}") from None
    if meta.get("kind") != "localizer":
        raise CheckpointError(f"'{path}' is not a localizer checkpoint (a classifier's?)")
    expected = [tuple(w.shape) for w in model.get_weights()]
    if [tuple(w.shape) for w in weights] != expected:
        raise CheckpointError(f"'{path}' holds {len(weights)} weights that do not fit the config's localizer "
                              f"({len(expected)} weights); was it written with a different config?")
    model.set_weights(weights)
    if optimizer is not None:
        variables = list(optimizer.variables)
        if [tuple(v.shape) for v in variables] != [tuple(o.shape) for o in opt]:
            raise CheckpointError(f"'{path}': the optimizer state does not fit this optimizer")
        for var, value in zip(variables, opt, strict=True):
            var.assign(value.astype(var.dtype))
    return meta


# ---------------------------------------------------------------------------------------- setup
def geometry_of(model, config, fps: float):
    """The `SequenceGeometry` of a localizer and its config at `fps`."""
    from mtv.long.datasets import SequenceGeometry
    from mtv.long.localization import localization_section

    section = localization_section(config)
    ranges = section.get("regression_ranges")
    frames = int(next(iter(model.input_shapes.values()))[0])
    return SequenceGeometry(window_frames=frames, steps_per_window=int(model.steps_per_window),
                            windows_per_sequence=int(section.get("windows_per_sequence", 16)), fps=float(fps),
                            num_levels=int(model.head.settings["num_levels"]),
                            regression_ranges=tuple(tuple(float(v) for v in r) for r in ranges) if ranges else None)


def postprocess_settings(config) -> dict:
    """The `decode_segments` post-processing keywords of a localizer config."""
    from mtv.long.localization import localization_section

    return dict(localization_section(config).get("postprocess") or {})


def _fps(data, config) -> float:
    rates = {round(v.fps, 6) for v in data.train + data.heldout}
    if len(rates) != 1:
        raise DataError(f"the untrimmed videos come at several frame rates {sorted(rates)}; a localizer trains at "
                        "one rate")
    return float(rates.pop())


def _load_data(config, workdir: Path, videos: str | None):
    from mtv.data.datasets import DatasetRequest, get_dataset
    from mtv.long.datasets import UntrimmedData
    from mtv.models.spec import to_plain

    name = config.get("dataset_name")
    entry = get_dataset(name)
    dc = to_plain(config.get("dataset_configs")) or {}
    request = DatasetRequest("data", name, dc, {"label": 0}, workdir, videos)
    spec = entry.build(request)
    if not isinstance(spec.source, UntrimmedData):
        raise ConfigError(f"config.dataset_name is '{name}', which gives clips, not untrimmed videos; a localizer "
                          "trains on 'camera_motion_untrimmed' or 'untrimmed_csv'")
    if not spec.source.train:
        raise DataError(f"dataset '{name}' has no training videos")
    return spec.source


def init_backbone(model, config) -> str:
    """Applies `config.init_from` (as the classifier trainer does) to a localizer's backbone; the head stays random."""
    from mtv.training.init_from import initialize

    return initialize(model.backbone, config)


# ---------------------------------------------------------------------------------------- train
def train_localizer(config: Any, workdir: str | os.PathLike, *, videos: str | None = None, verbose: int = 0,
                    allow_config_change: bool = False, data=None):
    """Trains (or resumes) a localizer run in `workdir`; returns a `mtv.training.trainer.TrainResult`.

    `data`: an `UntrimmedData` to train on instead of the config's dataset (benchmarks, tests).
    """
    from mtv.long.localization import build_localization_model, localization_section
    from mtv.training.optimizer import make_optimizer
    from mtv.training.schedules import ScenicSchedule, lr_value, resolve_lr_configs
    from mtv.training.trainer import TrainResult, _positive_int, check_resumed_config, load_train_config

    config = load_train_config(config)
    localization_section(config)  # a bad section fails before any data is read
    workdir = Path(workdir)
    changed = check_resumed_config(config, workdir, allow_config_change=allow_config_change)
    batch = _positive_int(config, "batch_size")
    total = _positive_int(config, "num_training_steps")
    every = int(config.get("checkpoint_steps") or total)
    seed = int(config.get("rng_seed", 0))
    data = data if data is not None else _load_data(config, workdir, videos)
    fps = _fps(data, config)
    model = build_localization_model(config, num_classes=len(data.class_names), seed=seed)
    geometry = geometry_of(model, config, fps)
    lr_cfg = resolve_lr_configs(config.get("lr_configs") or {"base_learning_rate": 0.1}, steps_per_epoch=total,
                                total_steps=total)
    optimizer = make_optimizer(config, ScenicSchedule(lr_cfg))
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    with writing(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    from mtv.training import checkpoints as ckpt_lib

    latest = ckpt_lib.latest_checkpoint(workdir)
    if latest is not None:
        start = int(restore_state(latest, model, optimizer)["step"])
        if changed:
            os.replace(workdir / "config.json", workdir / f"config.before_step_{start}.json")
            atomic_write_text(workdir / "config.json", config.to_json(indent=1))
        logging.info("resuming the localizer in %s at step %d of %d", workdir, start, total)
    else:
        start = 0
        logging.info("localizer backbone: %s", init_backbone(model, config))
        atomic_write_text(workdir / "config.json", config.to_json(indent=1))
    info = {"class_names": list(data.class_names), "fps": fps, "window_frames": geometry.window_frames,
            "steps_per_window": geometry.steps_per_window, "size": int(next(iter(model.input_shapes.values()))[1]),
            "held_out": data.held_out, "videos": str(videos) if videos else None,
            "label_column": ((config.get("dataset_configs") or {}).get("untrimmed_csv") or {}).get("label_column",
                                                                                                 "label")}
    atomic_write_text(workdir / INFO_FILE, json.dumps(info, indent=1))
    keep = int(config.get("max_checkpoint_keep", 3))
    meta = {"total_steps": total, "batch_size": batch, "class_names": list(data.class_names)}
    history: list[dict] = []
    evaluation: dict = {}
    step = start
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as log:
        while step < total:
            x, y = _batch(data, geometry, batch, seed, step)
            began = time.perf_counter()
            loss = float(np.asarray(model.train_on_batch(x, y)))
            step += 1
            record = {"step": step, "loss": loss, "learning_rate": float(lr_value(lr_cfg, step - 1)),
                      "seconds": round(time.perf_counter() - began, 4)}
            if not math.isfinite(loss):
                raise DataError(f"the localization loss became {loss} at step {step}; lower "
                                "lr_configs.base_learning_rate or check the data")
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if verbose:
                print(f"step {step}/{total}: loss {loss:.4f}", flush=True)
            if step % every == 0 or step == total:
                save_state(workdir, step, model, optimizer, meta, keep)
        if data.heldout:
            from mtv.long.inference import Localizer, evaluate_localizer

            localizer = Localizer(model, config, info)
            full = evaluate_localizer(localizer, data.heldout)
            evaluation = {k: v for k, v in full.items() if k.startswith("mAP")}
            log.write(json.dumps({"step": step, "eval": evaluation}) + "\n")
    if evaluation and ckpt_lib.latest_checkpoint(workdir) is not None:
        save_state(workdir, step, model, optimizer, {**meta, "eval": evaluation}, keep)
    return TrainResult(model, workdir, step, total, start, history, evaluation, 0, None)


def _batch(data, geometry, batch: int, seed: int, step: int):
    from mtv.long.datasets import sample_sequences

    rng = np.random.default_rng([seed, step])
    return sample_sequences(data.train, geometry, data.class_names, batch, rng)

