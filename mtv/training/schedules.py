"""Scenic's compound learning-rate schedule ('constant * cosine_decay * linear_warmup', ...) for Keras.

The factor maths follow `scenic/train_lib/lr_schedules.py` (google-research/scenic, read at commit
00091de01359d49b4645a9f4ed112ebe13820c0c): the learning rate of step `s` (0-based, the optimizer's
iteration count before the update) is the product of the named factors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from mtv.errors import ConfigError

FACTORS = ("constant", "linear_warmup", "cosine_decay", "rsqrt_decay", "decay_every", "linear_decay",
           "polynomial", "piecewise_constant")


def resolve_lr_configs(lr_configs: Any, *, steps_per_epoch: int, total_steps: int) -> dict:
    """Plain dict of `lr_configs` with epoch-based fields turned into steps and placeholders filled.

    `warmup_epochs` (if given) becomes `warmup_steps`; a missing or non-positive `steps_per_cycle`
    (Scenic's configs compute it from a dataset size left at 0) becomes `total_steps`.
    """
    cfg = dict(lr_configs.to_dict() if hasattr(lr_configs, "to_dict") else (lr_configs or {}))
    if "base_learning_rate" not in cfg:
        raise ConfigError("missing field 'lr_configs.base_learning_rate'")
    if cfg.get("warmup_epochs") is not None:
        cfg["warmup_steps"] = float(cfg.pop("warmup_epochs")) * steps_per_epoch
    if not cfg.get("steps_per_cycle") or cfg["steps_per_cycle"] <= 0:
        cfg["steps_per_cycle"] = max(int(total_steps), 1)
    factors = [f.strip() for f in str(cfg.get("factors", "constant")).split("*") if f.strip()]
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise ConfigError(f"'lr_configs.factors' has unknown factor(s) {unknown}; known: {list(FACTORS)}")
    cfg["factors"] = " * ".join(factors)
    return cfg


def _cosine(progress, xp):
    return xp.maximum(0.0, 0.5 * (1.0 + xp.cos(math.pi * (progress % 1.0))))


def lr_value(cfg: Mapping, step, xp=np):
    """The learning rate at `step` (numpy with xp=np, or Keras ops with xp=keras.ops)."""
    step = xp.cast(step, "float32") if xp is ops else np.asarray(step, np.float64)
    ratio = 1.0
    warmup = float(cfg.get("warmup_steps", 0.0) or 0.0)
    for name in [f.strip() for f in cfg["factors"].split("*")]:
        if name == "constant":
            ratio = ratio * float(cfg["base_learning_rate"])
        elif name == "linear_warmup":
            if warmup > 0:
                alpha = float(cfg.get("warmup_alpha", 0.0))
                ratio = ratio * xp.minimum(1.0, alpha + step * (1.0 - alpha) / warmup)
        elif name == "cosine_decay":
            cycle = float(cfg["steps_per_cycle"])
            total = float(cfg.get("total_steps", cycle))
            # Scenic shortens each cycle by its share of the warm-up so the decay ends with the run.
            cycle = cycle - int(warmup / (total / cycle))
            if cycle <= 0:
                raise ConfigError(f"lr_configs: warmup_steps ({warmup}) must be shorter than steps_per_cycle "
                                  f"({cfg['steps_per_cycle']})")
            adjusted = xp.maximum(0.0, step - (warmup + float(cfg.get("start_decay_step", 0.0))))
            alpha = float(cfg.get("alpha", 0.0))
            ratio = ratio * ((1 - alpha) * _cosine(adjusted / cycle, xp) + alpha)
        elif name == "rsqrt_decay":
            timescale = float(cfg.get("timescale", 10_000))
            value = math.sqrt(timescale) / xp.sqrt(step + (timescale - warmup))
            ratio = ratio * xp.where(step > warmup, value, 1.0)
        elif name == "decay_every":
            ratio = ratio * float(cfg["decay_factor"]) ** xp.floor(step / float(cfg["steps_per_decay"]))
        elif name == "linear_decay":
            total = float(cfg["total_steps"])
            end = float(cfg.get("end_learning_rate", 0.0))
            progress = xp.maximum(0.0, (step - warmup) / (total - warmup))
            ratio = (ratio - end) * xp.maximum(1.0 - progress, 0.0) + end
        elif name == "polynomial":
            decay, end, power = float(cfg["decay_steps"]), float(cfg["end_factor"]), float(cfg["power"])
            inside = xp.maximum(1.0 - step / decay, 0.0)
            ratio = ratio * ((1 - end) * inside ** power + end)
        elif name == "piecewise_constant":
            factors = [1.0] + [float(f) for f in cfg["decay_factors"]]
            index = sum(xp.where(step > float(b), 1, 0) for b in cfg["decay_events"])
            ratio = ratio * (ops.take(ops.convert_to_tensor(factors), index) if xp is ops
                             else np.asarray(factors)[index])
    return ratio


@keras.saving.register_keras_serializable(package="mtv")
class ScenicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Keras schedule computing Scenic's compound learning rate from a resolved `lr_configs` dict."""

    def __init__(self, lr_configs: Mapping):
        self.lr_configs = dict(lr_configs)
        lr_value(self.lr_configs, 0)  # validates the fields once, eagerly

    def __call__(self, step):
        return ops.cast(lr_value(self.lr_configs, step, xp=ops), "float32")

    def get_config(self):
        return {"lr_configs": self.lr_configs}
