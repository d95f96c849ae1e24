"""What training does differently on Keras' TensorFlow and JAX backends, in one place.

The recipe itself (loss, Scenic's momentum, clipping, schedules, checkpoints) is written in `keras.ops` and is
the same on both. What differs:

- replicas: tf.distribute strategies ('mirrored', 'multi_worker', 'tpu') exist on TensorFlow only; on JAX a
  run uses one device (`check_strategy` refuses the others with a clear error, rather than silently training
  on one device while the strategy is ignored).
- compilation: on JAX the train step is always `jax.jit`-compiled (Keras' default there; op-by-op JAX is
  slow), on TensorFlow `config.jit_compile` picks XLA or a tf.function.
- held-out prediction: a tf.function on TensorFlow, Keras' jitted `predict_on_batch` on JAX.
Both read data with tf.data (Keras' JAX trainer iterates tf.data datasets), so training needs TensorFlow
installed whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from mtv.errors import ConfigError
from mtv.utils.lazy_tf import tensorflow_loaded

TF_ONLY_STRATEGIES = ("mirrored", "multi_worker", "tpu")


def backend() -> str:
    """Keras' backend name: 'tensorflow' or 'jax'."""
    return keras.backend.backend()


def check_strategy(name: str | None) -> None:
    """Refuses a tf.distribute strategy on a backend other than TensorFlow (a ConfigError naming both)."""
    if name in TF_ONLY_STRATEGIES and backend() != "tensorflow":
        raise ConfigError(f"strategy {name!r} is a tf.distribute strategy and needs KERAS_BACKEND=tensorflow; on "
                          f"the {backend()} backend mtv trains on one device (strategy 'default')")


def jit_compile(config) -> bool:
    """Whether Keras compiles the train step: always on JAX, `config.jit_compile` (default off) on TensorFlow."""
    if backend() == "jax":
        return True
    return bool(config.get("jit_compile", False))


def replica_context():
    """The tf.distribute replica context when more than one replica trains in sync, else None (always on JAX)."""
    tf = tensorflow_loaded()
    if backend() != "tensorflow" or tf is None:
        return None
    ctx = tf.distribute.get_replica_context()  # None in a cross-replica context
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def num_replicas() -> int:
    """Replicas training in sync (1 outside tf.distribute and on JAX)."""
    ctx = replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def is_multi_worker(model: keras.Model) -> bool:
    """Whether `model` trains under a tf.distribute MultiWorkerMirroredStrategy."""
    tf = tensorflow_loaded()
    if backend() != "tensorflow" or tf is None:
        return False
    return isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)


def clip_by_global_norm(grads: list, max_norm: float) -> list:
    """Scales `grads` (no None) so that their global L2 norm is at most `max_norm`, as `tf.clip_by_global_norm`:
    g * max_norm / max(norm, max_norm), in float32."""
    norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads))
    max_norm = ops.convert_to_tensor(max_norm, "float32")
    scale = max_norm * ops.minimum(1.0 / norm, 1.0 / max_norm)
    return [g * ops.cast(scale, g.dtype) for g in grads]


def predict_function(model: keras.Model) -> Callable:
    """A compiled `inputs -> outputs (NumPy)` for held-out evaluation (one trace per input shape)."""
    if backend() == "tensorflow":
        tf = tensorflow_loaded()
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: tf.nest.map_structure(lambda t: t.numpy(), predict(tf.nest.map_structure(tf.constant, x)))
    return model.predict_on_batch
