"""Training sources: infinite, resumable streams of global batches from arrays, TFRecords or generators.

A `Source` yields global batches `(frames float32 [B, T, H, W, 3] in [-1, 1], labels)` where labels are
one-hot float rows `{label name: [B, C]}`. Batch `s` of an array or generated source is a function of
`(seed, s)`, and TFRecords are read in a seeded order, so a run resumed at step `s` sees exactly the
batches an uninterrupted run would.

Under tf.distribute every input pipeline builds only its own replicas' batches: given a
`tf.distribute.InputContext`, a source yields per-replica batches of b = B / replicas examples, global
replica r of step s taking positions s*B + r*b ... s*B + r*b + b - 1 of the single-device stream, and a
pipeline yields its local replicas' batches one after another (`PipelineShare`), the order in which
`distribute_datasets_from_function` hands elements to its replicas.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from mtv.errors import ConfigError, DataError


def plain(value: Any) -> Any:
    """A ConfigDict as a plain dict (anything else unchanged)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


@dataclasses.dataclass(frozen=True)
class PipelineShare:
    """What one input pipeline feeds: rows [start, stop) of every global batch, as `local` per-replica batches."""

    global_batch: int
    per_replica: int
    local: int  # replicas this pipeline feeds
    first: int  # the global index of its first replica

    @classmethod
    def of(cls, global_batch: int, input_context: tf.distribute.InputContext | None = None) -> PipelineShare:
        """The share of the pipeline `input_context` describes (None: one device, the whole batch)."""
        if input_context is None:
            return cls(global_batch, global_batch, 1, 0)
        replicas, pipelines = input_context.num_replicas_in_sync, input_context.num_input_pipelines
        if global_batch % replicas:
            raise ConfigError(f"batch_size {global_batch} is not divisible by the {replicas} replicas; the global "
                              "batch is split evenly across them")
        if replicas % pipelines:
            raise ConfigError(f"{replicas} replicas cannot be spread evenly over {pipelines} input pipelines")
        local = replicas // pipelines
        return cls(global_batch, global_batch // replicas, local, input_context.input_pipeline_id * local)

    @property
    def start(self) -> int:
        """The first row of the global batch this pipeline feeds."""
        return self.first * self.per_replica

    @property
    def stop(self) -> int:
        """One past the last row of the global batch this pipeline feeds."""
        return self.start + self.local * self.per_replica

    def position(self, n: tf.Tensor, start: int) -> tf.Tensor:
        """Global example position of this pipeline's `n`-th example (per-replica batches, local replicas in turn),
        for a stream whose first global batch starts at position `start`."""
        m, i = n // self.per_replica, n % self.per_replica
        step, replica = m // self.local, self.first + m % self.local
        return start + step * self.global_batch + replica * self.per_replica + i

    def split(self, ds: tf.data.Dataset, *, global_batches: bool = False) -> tf.data.Dataset:
        """Per-replica batches, `local` per step, from batches of this pipeline's rows (or of whole global
        batches, `global_batches=True`, which keeps only this pipeline's rows)."""
        offset = self.start if global_batches else 0
        rows = self.local * self.per_replica

        def cut(t: tf.Tensor) -> tf.Tensor:
            tail = t.shape[1:] if t.shape[1:].is_fully_defined() else tf.shape(t)[1:]
            return tf.reshape(t[offset:offset + rows], tf.concat([[self.local, self.per_replica], tail], 0))

        def replica_batches(*element):
            return tf.nest.map_structure(cut, element if len(element) > 1 else element[0])

        return ds.map(replica_batches).unbatch()


@dataclasses.dataclass
class Source:
    """A training source: `batches(batch_size, start_step, seed, input_context)` and label shapes by name.

    `make(batch_size, start_step, seed, input_context=None)` gives global batches, or with an input context
    only that pipeline's per-replica batches (see the module docstring). A `make` without the
    `input_context` parameter is served by slicing its global batches (every pipeline then builds them all).
    """

    name: str
    classes: dict[str, int]  # label name -> classes
    num_examples: int | None
    make: Callable[..., tf.data.Dataset]  # (batch_size, start_step, seed[, input_context]) -> dataset
    skip_counter: Any = None

    @property
    def per_pipeline(self) -> bool:
        """Whether `make` builds one input pipeline's batches itself (it takes `input_context`)."""
        try:
            return "input_context" in inspect.signature(self.make).parameters
        except (TypeError, ValueError):  # a callable without a readable signature: assume the old contract
            return False

    def batches(self, batch_size: int, start_step: int, seed: int,
                input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        """Infinite global batches from step `start_step` on; with `input_context`, that pipeline's per-replica
        batches, its local replicas' one after another."""
        if input_context is None:
            return self.make(batch_size, start_step, seed)
        share = PipelineShare.of(batch_size, input_context)
        if self.per_pipeline:
            return self.make(batch_size, start_step, seed, input_context=input_context)
        return share.split(self.make(batch_size, start_step, seed), global_batches=True)


def step_dataset(batch_at: Callable[[int], tuple], signature: tuple, start_step: int) -> tf.data.Dataset:
    """Batches computed on the host from their step number, in order, two at a time."""
    flat_sig = tf.nest.flatten(signature)

    def fetch(step):
        values = tf.numpy_function(lambda s: tf.nest.flatten(batch_at(int(s))), [step],
                                   [s.dtype for s in flat_sig], stateful=False)
        for value, spec in zip(values, flat_sig, strict=True):
            value.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(signature, values)

    ds = tf.data.Dataset.range(start_step, 2**62)
    return ds.map(fetch, num_parallel_calls=2, deterministic=True).prefetch(2)


def epoch_indices(step: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """The example indices of batch `step`: each epoch visits all `count` examples in its own seeded order."""
    positions = step * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(positions, count)
    idx = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(count)
        idx[epochs == epoch] = order[offsets[epochs == epoch]]
    return idx


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as already normalised."""
    from mtv.data.preprocessor import normalize  # the evaluation pipeline's scaling, on NumPy arrays

    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return normalize(frames)
    return frames.astype(np.float32)


def one_hot(labels: np.ndarray, num_classes: int, name: str = "label") -> np.ndarray:
    """int [N] (or one-hot [N, C]) -> float32 [N, C]; a label outside [0, C) is a DataError."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise DataError(f"labels '{name}' have {labels.shape[1]} columns; expected {num_classes} classes")
        return labels.astype(np.float32)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"label '{name}' of example {int(bad[0])} is {int(labels[bad[0]])}, outside the "
                        f"{num_classes} classes [0, {num_classes}) ({bad.size} such examples)")
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels.astype(np.int64)] = 1.0
    return out


def array_source(frames: np.ndarray, labels: Mapping[str, np.ndarray] | np.ndarray,
                 num_classes: Mapping[str, int] | int, *, name: str = "data", random_flip: bool = False) -> Source:
    """In-memory clips (uint8 or [-1, 1] float [N, T, H, W, 3]) with int or one-hot labels.

    Examples are visited in a fresh permutation every epoch, drawn from `(seed, epoch)`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise DataError(f"training clips must be [N, T, H, W, 3], got shape {list(frames.shape)}")
    if not isinstance(labels, Mapping):
        labels = {"label": labels}
    if isinstance(num_classes, int):
        num_classes = dict.fromkeys(labels, num_classes)
    hot = {k: one_hot(v, num_classes[k], k) for k, v in labels.items()}
    count = len(frames)
    for key, value in hot.items():
        if len(value) != count:
            raise DataError(f"{count} clips but {len(value)} '{key}' labels")
    if count == 0:
        raise DataError(f"dataset '{name}' is empty")

    def make(batch_size: int, start_step: int, seed: int,
             input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        share = PipelineShare.of(batch_size, input_context)
        rows = slice(share.start, share.stop)  # the draws are the global batch's; only our rows are decoded

        def batch_at(step: int):
            idx = epoch_indices(step, batch_size, count, seed)[rows]
            x = normalize_frames(frames[idx])
            if random_flip:
                flip = np.random.default_rng([seed, 1 << 20, step]).random(batch_size)[rows] < 0.5
                x[flip] = x[flip, :, :, ::-1]
            return x, {k: v[idx] for k, v in hot.items()}

        local = share.stop - share.start
        sig = (tf.TensorSpec((local, *frames.shape[1:]), tf.float32),
               {k: tf.TensorSpec((local, v.shape[1]), tf.float32) for k, v in hot.items()})
        ds = step_dataset(batch_at, sig, start_step)
        return ds if input_context is None else share.split(ds)

    return Source(name, {k: v.shape[1] for k, v in hot.items()}, count, make)


def tfrecord_source(pattern, dataset_configs: Any, classes: Mapping[str, int], *, name: str = "data",
                    num_examples: int | None = None, modalities: tuple[str, ...] = ("rgb",)) -> Source:
    """Training batches from TFRecords via `mtv.data.tfrecord.make_dataset` (a dict of streams when `modalities`
    holds more than 'rgb'); skipped records are counted.

    The files are indexed once; batch `s` is a function of (seed, s), so a resume at step `s` starts there
    without reading the batches before it. With an `input_context`, `make` builds only that pipeline's
    per-replica batches (see `make_dataset`).
    """
    from mtv.data import record_index, tfrecord

    files = tfrecord.resolve_files(pattern)
    counter = tfrecord.SkipCounter()
    index = record_index.build_index(files)
    for reason in index.skipped:  # cut or empty records: counted once, here, not per epoch
        counter.add(reason)
    label_names = tuple(classes)

    def make(batch_size: int, start_step: int, seed: int,
             input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        ds = tfrecord.make_dataset(files, dataset_configs=plain(dataset_configs), is_train=True,
                                   batch_size=batch_size, label_names=label_names, num_classes=dict(classes),
                                   seed=seed, skip_counter=counter, modalities=modalities, index=index,
                                   start_position=start_step * batch_size, input_context=input_context)
        if len(label_names) == 1:
            ds = ds.map(lambda x, y: (x, {label_names[0]: y}))
        return ds

    if num_examples is None:
        num_examples = len(index)
    return Source(name, dict(classes), num_examples, make, skip_counter=counter)
