"""Combining training batches: labels renamed to model heads, co-finetuning mixtures, mixup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from mtv.errors import ConfigError


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
