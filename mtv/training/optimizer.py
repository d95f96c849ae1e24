"""Scenic's optimizer for MTV: SGD with momentum 0.9, global-norm clipping, optional L2 decay.

Written on Keras' public optimizer API: `apply` (overridden) and `update_step` (the subclassing hook the
`keras.optimizers.Optimizer` docstring describes). Semantics, for one replica and for N:

  g     = sum over replicas of each replica's gradient (each replica's loss is its share of the global
          batch mean, so g is the gradient of the global batch mean loss)
  g     = g + l2_decay_factor * w                     (Scenic adds 0.5 * l2 * |w|^2 to the loss)
  g     = g * min(1, max_grad_norm / |g|)             (global norm of the whole, summed gradient)
  m     = momentum * m + g;  w = w - lr * m           (optax/flax momentum, as Scenic)

Keras' own `global_clipnorm` would clip each replica's gradient before the replicas are summed, so its
threshold would depend on the replica count; here one replica and N replicas take the same step on the
same global batch. (Scenic's MTV trainer clips each device's gradient before `pmean`; with one device
the two agree.)

Keras' `apply` under tf.distribute sums the gradients it is given across replicas. To clip the sum, this
optimizer sums them first (one extra all-reduce, only when clipping with more than one replica) and
hands Keras each replica's equal share of the clipped total, which Keras sums back into that total.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtv.errors import ConfigError
from mtv.training.backend import clip_by_global_norm
from mtv.training.backend import replica_context as _replica_context


def _sum_across_replicas(ctx, grads: list) -> list:
    present = [g for g in grads if g is not None]
    reduced = iter(ctx.all_reduce("SUM", present)) if present else iter(())  # tf.distribute.ReduceOp.SUM
    return [None if g is None else next(reduced) for g in grads]


@keras.saving.register_keras_serializable(package="mtv")
class ScenicMomentum(keras.optimizers.SGD):
    """SGD + momentum whose global-norm clipping and L2 decay act on the cross-replica gradient."""

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, *, nesterov: bool = False,
                 global_clipnorm: float | None = None, l2_decay_factor: float | None = None, **kwargs):
        # Keras' own global_clipnorm stays unset: it would clip per replica (see the module docstring).
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        if global_clipnorm is not None and float(global_clipnorm) <= 0:
            raise ConfigError(f"global_clipnorm must be positive or None, got {global_clipnorm}")
        self.max_grad_norm = float(global_clipnorm) if global_clipnorm is not None else None
        self.l2_decay_factor = float(l2_decay_factor or 0.0)

    def apply(self, grads, trainable_variables=None):
        """Adds L2 decay and clips the global norm of the replica-summed gradient, then updates."""
        if trainable_variables is None:
            if not self.built:
                raise ValueError("ScenicMomentum.apply needs trainable_variables or a built optimizer (L2 decay "
                                 "reads the weights)")
            # Keras' JAX trainer (stateless_apply) passes none: the variables the optimizer was built with, as
            # Keras' own `apply` takes them.
            trainable_variables = self._trainable_variables
        grads, variables = list(grads), list(trainable_variables)
        ctx = _replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        summed = replicas == 1 or self.max_grad_norm is not None
        if replicas > 1 and self.max_grad_norm is not None:
            grads = _sum_across_replicas(ctx, grads)
        if self.l2_decay_factor:
            # Each replica adds its share of l2 * w when Keras is left to sum the replicas.
            l2 = self.l2_decay_factor if summed else self.l2_decay_factor / replicas
            grads = [g if g is None else g + ops.cast(l2, g.dtype) * ops.cast(v, g.dtype)
                     for g, v in zip(grads, variables, strict=True)]
        if self.max_grad_norm is not None:
            present = [i for i, g in enumerate(grads) if g is not None]
            clipped = clip_by_global_norm([grads[i] for i in present], self.max_grad_norm)
            for i, g in zip(present, clipped, strict=True):
                grads[i] = g / replicas if replicas > 1 else g
        return super().apply(grads, variables)

    def update_step(self, gradient, variable, learning_rate):
        """optax/flax momentum (Scenic): m <- beta * m + g;  w <- w - lr * m (Keras would fold lr into m)."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        beta = ops.cast(self.momentum, variable.dtype)
        # The variable -> slot lookup Keras' Optimizer docstring shows for subclasses' update_step.
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.add(ops.multiply(m, beta), gradient))
        step = ops.add(gradient, ops.multiply(beta, m)) if self.nesterov else m
        self.assign_sub(variable, ops.multiply(step, lr))

    def get_config(self) -> dict:
        """Keras config; `global_clipnorm` is Scenic's max_grad_norm (clipped after summing replicas)."""
        config = super().get_config()
        config["global_clipnorm"] = self.max_grad_norm
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
