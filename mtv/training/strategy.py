"""tf.distribute strategies by name, and feeding each worker only its own replicas' batches.

  'default'       one device (the default strategy)
  'mirrored'      MirroredStrategy over the local GPUs (or the given devices)
  'multi_worker'  MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG environment variable
  'tpu'           TPUStrategy on `tpu` (a name or grpc:// address; '' = local). Not testable without a TPU.

`distribute` feeds a strategy through `distribute_datasets_from_function`: each input pipeline (one per
worker or TPU host) builds only its own replicas' batches, and the replicas of one step together see the
global batch one device would (`mtv.data.sources.PipelineShare`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import tensorflow as tf

from mtv.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", *, devices: list[str] | None = None, tpu: str = "") -> tf.distribute.Strategy:
    """A tf.distribute strategy by name (see the module docstring)."""
    if name in (None, "", "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy 'multi_worker' needs the TF_CONFIG environment variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        if tpu in ("", "local") and not tf.config.list_physical_devices("TPU"):
            raise ConfigError("strategy 'tpu': this machine has no local TPU; pass --tpu=NAME or grpc://ADDRESS "
                              "of a TPU worker")
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # TF raises several types when there is no TPU
            raise ConfigError(f"strategy 'tpu': cannot reach a TPU at {tpu or '(local)'!r}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and summaries ('chief', else worker 0)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def distribute(strategy: tf.distribute.Strategy,
               dataset_fn: Callable[[tf.distribute.InputContext | None], tf.data.Dataset] | tf.data.Dataset,
               global_batch: int) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """The training input of `strategy`: `dataset_fn(None)` (global batches) on one device, else each input
    pipeline's `dataset_fn(input_context)` (its per-replica batches, local replicas one after another).

    A plain dataset of global batches is also accepted; every pipeline then builds all of it and keeps its
    rows, which costs each worker the whole batch's reading and decoding.
    """
    from mtv.data.sources import PipelineShare

    if isinstance(dataset_fn, tf.data.Dataset):
        dataset = dataset_fn

        def dataset_fn(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
            if ctx is None:
                return dataset
            return PipelineShare.of(global_batch, ctx).split(dataset, global_batches=True)

    replicas = strategy.num_replicas_in_sync
    if replicas == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset_fn(None)
    if global_batch % replicas:
        raise ConfigError(f"batch_size {global_batch} is not divisible by the {replicas} replicas; the global "
                          "batch is split evenly across them")

    def per_pipeline(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset_fn(ctx).prefetch(2)

    return strategy.distribute_datasets_from_function(per_pipeline)
