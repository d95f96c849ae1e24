"""Small building blocks shared by every MTV layer: norms, MLP, stochastic depth, Flax name tables, and the
initializer switch that loaders use to skip random initialisation."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

# Flax's LayerNorm epsilon (Keras defaults to 1e-3).
LN_EPSILON = 1e-6

_SKIP_INIT = contextvars.ContextVar("mtv_skip_random_init", default=False)


class _Unset(keras.initializers.Initializer):
    """Zeros as a NumPy array: no random draw and, on JAX, no kernel compiled for each weight shape."""

    def __call__(self, shape, dtype=None):
        return np.zeros(tuple(shape), keras.backend.standardize_dtype(dtype))


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """MTV weights created inside start as zeros instead of random draws: for models whose every weight is
    assigned next (presets, Scenic checkpoints, .keras files). On JAX each random draw compiles an XLA kernel
    per weight shape (0.1-0.5 s each on a CPU), which made loading a small model take tens of seconds."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def init(initializer):
    """`initializer` (a Keras initializer or its name), or a no-op placeholder inside `skip_random_init()`."""
    return _Unset() if _SKIP_INIT.get() else initializer


def layer_norm(name: str) -> keras.layers.LayerNormalization:
    """A LayerNorm with Flax's epsilon, over the last axis."""
    return keras.layers.LayerNormalization(epsilon=LN_EPSILON, gamma_initializer=init("ones"),
                                           beta_initializer=init("zeros"), name=name)


def flax_norm(layer: keras.layers.LayerNormalization) -> dict:
    """Flax names of a LayerNorm's weights."""
    return {"scale": layer.gamma, "bias": layer.beta}


def flax_dense(layer: keras.layers.Layer) -> dict:
    """Flax names of a Dense or Conv layer's weights."""
    return {"kernel": layer.kernel, "bias": layer.bias}


def prefixed(prefix: str, params: dict) -> dict:
    """Prepends `prefix/` to every key of a flat Flax-name table."""
    return {f"{prefix}/{k}": v for k, v in params.items()}


def gelu_tanh(x):
    """Flax's default GELU (tanh approximation)."""
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="mtv")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per example in training, as Scenic's StochasticDepth.

    Scenic multiplies by the keep mask without rescaling by 1/(1-rate) (despite its docstring); we
    match it so training dynamics carry over.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self._seed_gen = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate <= 0:
            return x
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        drop = keras.random.uniform(shape, seed=self._seed_gen, dtype=x.dtype) < self.rate
        return x * ops.cast(ops.logical_not(drop), x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="mtv")
class MlpBlock(keras.layers.Layer):
    """Dense -> GELU(tanh) -> dropout -> Dense -> dropout (Scenic's MlpBlock)."""

    def __init__(self, mlp_dim: int, dropout_rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        width = input_shape[-1]
        self.dense_0 = keras.layers.Dense(self.mlp_dim, name="Dense_0",
                                          kernel_initializer=init("glorot_uniform"),
                                          bias_initializer=init(keras.initializers.RandomNormal(stddev=1e-6)))
        self.dense_1 = keras.layers.Dense(width, name="Dense_1",
                                          kernel_initializer=init("glorot_uniform"),
                                          bias_initializer=init(keras.initializers.RandomNormal(stddev=1e-6)))
        self.dense_0.build(input_shape)
        self.dense_1.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def call(self, x, training=False):
        # On 2-D input TF's graph optimiser fuses matmul + bias + GELU into one oneDNN op; on N-D
        # input Keras' tensordot reshape sits between them and GELU runs as ~8 separate passes
        # (about 10% of MTV-B's forward time on CPU).
        shape = ops.shape(x)
        y = ops.reshape(x, (-1, x.shape[-1]))
        y = gelu_tanh(self.dense_0(y))
        y = self.dropout(y, training=training)
        y = self.dropout(self.dense_1(y), training=training)
        return ops.reshape(y, shape)

    def flax_params(self) -> dict:
        return {**prefixed("Dense_0", flax_dense(self.dense_0)), **prefixed("Dense_1", flax_dense(self.dense_1))}

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim, "dropout_rate": self.dropout_rate}
