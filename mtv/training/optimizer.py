"""Scenic's optimizer for MTV: SGD with momentum 0.9, global-norm clipping, optional L2 decay.

Keras clips gradients per replica, before they are summed across replicas, so the clipping threshold
would depend on the number of replicas. Here the gradients are summed first and the global norm of the
summed gradient is clipped, so one replica and N replicas take the same step on the same global batch.
(Scenic's MTV trainer clips each device's gradient before `pmean`; with one device the two agree.)
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from mtv.errors import ConfigError


def _sum_across_replicas(grads: list) -> list:
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return grads
    present = [g for g in grads if g is not None]
    reduced = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present)) if present else iter(())
    return [None if g is None else next(reduced) for g in grads]


@keras.saving.register_keras_serializable(package="mtv")
class ScenicMomentum(keras.optimizers.SGD):
    """SGD + momentum whose global-norm clipping and L2 decay act on the cross-replica gradient."""

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, *, nesterov: bool = False,
                 global_clipnorm: float | None = None, l2_decay_factor: float | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         global_clipnorm=global_clipnorm, **kwargs)
        self.l2_decay_factor = float(l2_decay_factor or 0.0)

    def _backend_apply_gradients(self, grads, trainable_variables):
        grads = _sum_across_replicas(list(grads))
        if self.l2_decay_factor:
            # Scenic adds 0.5 * l2 * sum(w^2) to the loss; its gradient is l2 * w, clipped with the rest.
            grads = [g if g is None else g + tf.cast(self.l2_decay_factor, g.dtype) * tf.cast(v, g.dtype)
                     for g, v in zip(grads, trainable_variables, strict=True)]
        return super()._backend_apply_gradients(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        # optax/flax momentum (Scenic): m <- beta * m + g;  w <- w - lr * m  (Keras would fold lr into m).
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        beta = ops.cast(self.momentum, variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.add(ops.multiply(m, beta), gradient))
        step = ops.add(gradient, ops.multiply(beta, m)) if self.nesterov else m
        self.assign_sub(variable, ops.multiply(step, lr))

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)  # already summed in _backend_apply_gradients

    def get_config(self):
        config = super().get_config()
        config["l2_decay_factor"] = self.l2_decay_factor
        return config


def make_optimizer(config: Any, learning_rate) -> ScenicMomentum:
    """The optimizer a Scenic config asks for ('momentum' = SGD with momentum, as every MTV config)."""
    name = config.get("optimizer", "momentum")
    if name not in ("momentum", "sgd", "nesterov"):
        raise ConfigError(f"config.optimizer is {name!r}; mtv trains with Scenic's 'momentum' optimizer "
                          "(SGD with momentum), 'nesterov' or 'sgd'")
    opt_cfg = config.get("optimizer_configs") or {}
    momentum = float(opt_cfg.get("momentum", opt_cfg.get("beta", 0.9))) if name != "sgd" else 0.0
    clip = config.get("max_grad_norm")
    if clip is not None and float(clip) <= 0:
        raise ConfigError(f"config.max_grad_norm must be positive or None, got {clip}")
    return ScenicMomentum(learning_rate=learning_rate, momentum=momentum, nesterov=name == "nesterov",
                          global_clipnorm=float(clip) if clip is not None else None,
                          l2_decay_factor=config.get("l2_decay_factor"))
