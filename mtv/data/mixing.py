"""Combining training batches: labels renamed to model heads, co-finetuning mixtures, mixup, modality dropout.

Inputs are a bare clip batch (MTV) or a dict of streams {'rgb', 'flow', 'audio'} (M&M). Every random
choice here is a stateless TensorFlow function of (seed, global step), so a run resumed at step `s` draws
exactly what an uninterrupted run draws, and the pipeline holds no Python function (a remote TPU host
can run it).

Under tf.distribute each input pipeline mixes its own per-replica batches (`share`, a
`mtv.data.sources.PipelineShare`; its elements are `share.local` replica batches per step):
  - the co-finetuning dataset of step s is drawn once per step, so all replicas of a step read the same
    dataset, as the one-device global batch does;
  - modality dropout draws its per-example choices for the whole global batch and each replica keeps its
    rows, so it drops exactly what one device would;
  - mixup draws one lambda per step (the same on every replica) but mixes each replica batch with its own
    reverse, so which examples pair up differs from the one-device global batch (example i of the global
    batch pairs with B-1-i there, with the mirror position inside its replica batch here). This is
    Scenic's semantics: Scenic mixes inside the pmapped train step, per device.
With one device every function here gives the global batches it always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from mtv.errors import ConfigError
from mtv.models.missing import MISSING_VALUE

if TYPE_CHECKING:
    from mtv.data.sources import PipelineShare


def step_numbers(start_step: int, share: PipelineShare | None = None) -> tf.data.Dataset:
    """(global step, global replica) of each element of a pipeline's batches from `start_step` on."""
    if share is None or share.local == 1:
        first = 0 if share is None else share.first
        return tf.data.Dataset.range(start_step, 2**62).map(lambda s: (s, tf.constant(first, tf.int64)))
    local = share.local
    return tf.data.Dataset.range(0, 2**62).map(
        lambda e: (start_step + e // local, share.first + e % local))


def to_heads(ds: tf.data.Dataset, label_map: Mapping[str, str], heads: Mapping[str, int],
             single_head: bool) -> tf.data.Dataset:
    """Renames a source's labels to model heads, zero-fills heads it has no labels for."""

    def convert(x, labels):
        out = {}
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        for head, count in heads.items():
            source_name = next((s for s, h in label_map.items() if h == head), None)
            if source_name is not None:
                out[head] = labels[source_name]
            else:
                out[head] = tf.zeros([batch, count], tf.float32)
        return x, (out[next(iter(heads))] if single_head else out)

    return ds.map(convert)


def mixture(datasets: Sequence[tf.data.Dataset], weights: Sequence[float], *, seed: int,
            start_step: int, share: PipelineShare | None = None) -> tf.data.Dataset:
    """Co-finetuning: step `s` comes from dataset i with probability weights[i], drawn from (seed, s)
    (with `share`, all of a step's replica batches come from that dataset)."""
    weights = np.asarray(weights, np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"sampling weights must be >= 0 and not all 0, got {weights.tolist()}")
    cdf = tf.constant(np.cumsum(weights / weights.sum()), tf.float64)
    last = len(weights) - 1

    def choice(step, replica):
        u = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64) + 7, step]), dtype=tf.float64)
        # Rounding may leave cdf[-1] a hair below 1; a draw above it belongs to the last dataset.
        return tf.minimum(tf.reduce_sum(tf.cast(cdf <= u, tf.int64)), last)

    choices = step_numbers(start_step, share).map(choice)
    return tf.data.Dataset.choose_from_datasets(list(datasets), choices)


def mixup_batches(ds: tf.data.Dataset, alpha: float, *, seed: int, start_step: int,
                  share: PipelineShare | None = None) -> tf.data.Dataset:
    """Scenic's mixup of each batch with its reverse (one lambda ~ Beta(alpha, alpha) per step; with `share`,
    each replica batch with its own reverse, see the module docstring).

    With a dict of streams every stream is mixed with the batch's one lambda, as the labels are.
    """
    from mtv.data.transforms import mixup_tf

    def mix(batch, numbers):
        x, y = batch
        seed_pair = tf.stack([tf.constant(seed, tf.int64), numbers[0]])
        seed_pair = tf.cast(seed_pair % (2**31 - 1), tf.int32)
        if not isinstance(x, Mapping):
            mixed_x, mixed_y, _ = mixup_tf(x, y, alpha, seed=seed_pair)
            return mixed_x, mixed_y
        first = next(iter(x))
        mixed_first, mixed_y, lam = mixup_tf(x[first], y, alpha, seed=seed_pair)
        mixed_x = {k: mixed_first if k == first else _blend(v, lam) for k, v in x.items()}
        return mixed_x, mixed_y

    return tf.data.Dataset.zip((ds, step_numbers(start_step, share))).map(mix)


def _blend(x: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    lam = tf.cast(lam, x.dtype)
    return lam * x + (1 - lam) * tf.reverse(x, axis=[0])


# ---------------------------------------------------------------------------------- modality dropout
def check_modality_dropout(value: Any, modalities: Sequence[str]) -> dict[str, float]:
    """`config.modality_dropout` as {stream: probability}, validated against the model's streams.

    None or {} means no dropout. Probabilities are in [0, 1]; every key must be one of the model's
    streams; a single-stream model cannot drop its only stream.
    """
    if value is None:
        return {}
    value = value.to_dict() if hasattr(value, "to_dict") else value
    if not isinstance(value, Mapping):
        raise ConfigError(f"config.modality_dropout must map streams to drop probabilities, e.g. "
                          f"{{'flow': 0.25, 'audio': 0.25}}; got {value!r}")
    probs = {}
    for name, p in value.items():
        if name not in modalities:
            raise ConfigError(f"config.modality_dropout names {name!r}, which is not a stream of this model "
                              f"({', '.join(modalities)})")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"config.modality_dropout.{name} must be a probability in [0, 1], got {p!r}")
        probs[name] = float(p)
    if any(probs.values()) and len(modalities) < 2:
        raise ConfigError(f"config.modality_dropout drops streams, but this model has one stream "
                          f"({', '.join(modalities)}); it would never be dropped (every example keeps a stream)")
    return {m: p for m, p in probs.items() if p > 0}


def drop_modalities(x: Mapping[str, tf.Tensor], probs: Mapping[str, float], seed, *,
                    global_batch: int | None = None, first_row=0) -> tuple[dict, tf.Tensor]:
    """Replaces each example's stream m, with probability probs[m], by the missing value; never all streams.

    Returns (inputs, dropped bool [B, streams] in `x`'s key order). An example whose draws drop every stream
    gets one of them back, chosen uniformly, so the rate of stream m is probs[m] minus its share of those.
    global_batch / first_row: `x` is rows first_row ... of a global batch of that size; the draws are the
    global batch's, so a replica drops exactly what one device drops for those examples.
    """
    from mtv.data.transforms import split_seed

    names = list(x)
    batch = tf.shape(x[names[0]])[0]
    draws = batch if global_batch is None else global_batch
    p = tf.constant([probs.get(m, 0.0) for m in names], tf.float32)
    draw_seed, keep_seed = tf.unstack(split_seed(seed, 2))
    dropped = tf.random.stateless_uniform([draws, len(names)], draw_seed) < p[None]
    all_gone = tf.reduce_all(dropped, axis=1, keepdims=True)
    restore = tf.one_hot(tf.random.stateless_uniform([draws], keep_seed, 0, len(names), tf.int32), len(names),
                         on_value=True, off_value=False, dtype=tf.bool)
    dropped = dropped & ~(all_gone & restore)
    if global_batch is not None:
        dropped = dropped[first_row:first_row + batch]
    out = {}
    for i, name in enumerate(names):
        value = x[name]
        mask = tf.reshape(dropped[:, i], tf.concat([[batch], tf.ones([tf.rank(value) - 1], tf.int32)], 0))
        out[name] = tf.where(mask, tf.constant(MISSING_VALUE, value.dtype), value)
    return out, dropped


def modality_dropout_batches(ds: tf.data.Dataset, probs: Mapping[str, float], *, seed: int,
                             start_step: int, share: PipelineShare | None = None) -> tf.data.Dataset:
    """Modality dropout on dict batches (`drop_modalities`), drawn from (seed, global step); with `share`, each
    replica batch gets its rows of the global batch's draws."""
    salt = tf.constant(0x6D6F64, tf.int64)  # keeps these draws apart from mixup's, which use (seed, step) too
    layout = {} if share is None else {"global_batch": share.global_batch}

    def drop(batch, numbers):
        x, y = batch
        step, replica = numbers
        seed_pair = tf.cast(tf.stack([tf.constant(seed, tf.int64) + salt, step]) % (2**31 - 1), tf.int32)
        rows = {} if share is None else {"first_row": tf.cast(replica, tf.int32) * share.per_replica}
        return drop_modalities(x, probs, seed_pair, **layout, **rows)[0], y

    return tf.data.Dataset.zip((ds, step_numbers(start_step, share))).map(drop)
