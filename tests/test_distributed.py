"""tf.distribute: two mirrored replicas and two worker processes follow the one-replica loss curve.

The global batch is split across replicas and the gradient is clipped after the replicas' gradients
are summed, so with clipping active (a small max_grad_norm) the curves still agree. Each input pipeline
builds only its own replicas' batches (`input_context`): checked against the one-device global batches
for the array sources and the training mixes, and on TFRecords by which examples each worker's pipeline
reads. TPUStrategy cannot be exercised here (no TPU); its error without one is checked, and the TFRecord
training pipeline is checked to hold no Python function (a remote TPU host could not run one).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mtv.errors import ConfigError
from mtv.io.configs import load_config
from mtv.training import checkpoints as ckpt_lib
from mtv.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
OVERRIDES = {"num_training_steps": 6, "checkpoint_steps": 6, "batch_size": 8, "max_grad_norm": 0.05,
             "lr_configs.steps_per_cycle": 6, "lr_configs.warmup_steps": 2, "lr_configs.base_learning_rate": 0.3,
             "dataset_configs.synthetic.num_eval": 13}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _args(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtv.cli", "train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=0",
            *[f"--config.{k}={v}" for k, v in OVERRIDES.items()], *extra]


def _losses(workdir: Path) -> list[float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    return [x["loss"] for x in lines]


@pytest.fixture(scope="module")
def one_replica(tmp_path_factory):
    config = load_config(str(TINY))
    for key, value in OVERRIDES.items():
        *path, leaf = key.split(".")
        target = config
        for part in path:
            target = target[part]
        target[leaf] = value
    workdir = tmp_path_factory.mktemp("one_replica")
    result = train(config, workdir)
    losses = [s["loss"] for s in result.history]
    assert len(set(np.round(losses, 4))) > 3  # the curve moves, so agreeing with it means something
    return workdir, losses


def _params(workdir: Path) -> dict:
    return ckpt_lib.read_params(ckpt_lib.latest_checkpoint(workdir))


def _assert_same_run(workdir: Path, reference: Path, losses: list[float]) -> None:
    np.testing.assert_allclose(_losses(workdir), losses, rtol=1e-4, atol=1e-5)
    ours, ref = _params(workdir), _params(reference)
    for key in ("output_projection/kernel", "embedding_view1/kernel", "global_encoder/encoder_norm/scale"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-3, atol=1e-5)


def _outputs(procs: list[subprocess.Popen], reference_run) -> tuple:
    """Runs `reference_run()` while the subprocesses run; then their outputs, each checked to have succeeded."""
    try:
        reference = reference_run()
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    return reference, outputs


# Where the time goes (CPU seconds, measured): `mtv train` runs in a fresh process because logical CPU
# devices can only be configured before TensorFlow initialises, which the pytest process has done; that
# costs ~5 s of imports. Tracing the train step once per replica (Keras traces the model in each
# replica's thread, and the optimizer update for every variable on every device) and optimising the
# two-device graph cost ~16 s for the first step; the other 5 steps ~0.1 s each. The subprocesses are
# started before the in-process reference run is requested, so on two cores the two overlap.
def test_two_mirrored_replicas_match_one(tmp_path, request):
    proc = subprocess.Popen(_args(tmp_path / "mirrored", "--cpu_replicas=2"), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (reference, losses), _ = _outputs([proc], lambda: request.getfixturevalue("one_replica"))
    _assert_same_run(tmp_path / "mirrored", reference, losses)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_match_one_replica(tmp_path, request):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    workdir = tmp_path / "multi_worker"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(_args(workdir, "--strategy=multi_worker"), cwd=REPO,
                                      env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    (reference, losses), outputs = _outputs(procs, lambda: request.getfixturevalue("one_replica"))
    _assert_same_run(workdir, reference, losses)  # only the chief (worker 0) wrote the logs and checkpoints
    assert "step 6/6" in outputs[1]


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    from mtv.training.strategy import make_strategy

    with pytest.raises(ConfigError, match="tpu"):
        make_strategy("tpu")  # no local TPU here; a remote address would need a reachable TPU worker


# ------------------------------------------------------------------------------ per-pipeline input
def _context(pipelines: int, pipeline: int, replicas: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                      num_replicas_in_sync=replicas)


def _numpy(element):
    return tf.nest.map_structure(lambda t: t.numpy(), element)


def _by_replica(make, pipelines: int, replicas: int, steps: int) -> dict:
    """{(step, global replica): element} from every pipeline's `make(input_context)`."""
    local = replicas // pipelines
    out = {}
    for pipeline in range(pipelines):
        for e, element in enumerate(make(_context(pipelines, pipeline, replicas)).take(steps * local)):
            step, j = divmod(e, local)
            out[step, pipeline * local + j] = _numpy(element)
    assert len(out) == steps * replicas
    return out


def _assert_replicas_slice(global_batches: list, per_replica: dict, per_replica_batch: int) -> None:
    for (step, replica), element in per_replica.items():
        rows = slice(replica * per_replica_batch, (replica + 1) * per_replica_batch)
        expected = tf.nest.map_structure(lambda a, rows=rows: a[rows], global_batches[step])
        tf.nest.map_structure(np.testing.assert_array_equal, element, expected)


def _array_sources() -> dict:
    from mtv.data import synthetic
    from mtv.data.sources import Source, array_source
    from mtv.data.streams import stream_array_source

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (10, 2, 4, 4, 3), dtype=np.uint8)
    labels = {"label": np.arange(10) % 5}
    audio = rng.normal(size=(10, 6, 4, 1)).astype(np.float32)
    flipped = array_source(clips, labels, 5, random_flip=True)
    return {
        "array_source": flipped,
        "stream_array_source": stream_array_source({"rgb": clips, "audio": audio}, labels, {"label": 5}),
        "camera_motion": synthetic.camera_motion_source({"textures": 2}, num_frames=2, size=8),
        # A source whose make() predates input_context: every pipeline builds the global batch and slices it.
        "global_only": Source("old", {"label": 5}, 10, lambda b, s, seed: flipped.make(b, s, seed)),
    }


@pytest.mark.parametrize("layout", [(1, 2), (2, 2), (2, 4)], ids=["1x2", "2x2", "2x4"])
def test_array_sources_give_each_pipeline_its_rows_of_the_global_batch(layout):
    pipelines, replicas = layout
    batch, start, steps = 8, 3, 3  # 10 examples: the steps cross epoch boundaries
    for name, source in _array_sources().items():
        assert source.per_pipeline == (name != "global_only")
        global_batches = [_numpy(e) for e in source.batches(batch, start, 5).take(steps)]
        per_replica = _by_replica(lambda ctx, s=source: s.batches(batch, start, 5, ctx), pipelines, replicas, steps)
        _assert_replicas_slice(global_batches, per_replica, batch // replicas)


def test_a_batch_the_replicas_cannot_share_evenly_is_a_config_error():
    source = _array_sources()["array_source"]
    with pytest.raises(ConfigError, match="batch_size 6 is not divisible by the 4 replicas"):
        source.batches(6, 0, 0, _context(2, 0, 4))


def _stream_data(weights=(1.0, 1.0)):
    from mtv.data.datasets import DataSpec, TrainingData
    from mtv.data.streams import stream_array_source

    rng = np.random.default_rng(1)
    parts = []
    for i, name in enumerate(["a", "b"][:len(weights)]):
        streams = {"rgb": rng.integers(0, 256, (10, 2, 4, 4, 3), dtype=np.uint8),
                   "audio": rng.normal(size=(10, 6, 4, 1)).astype(np.float32)}
        labels = {"label": rng.permutation(10) if i == 0 else np.arange(10) % 3}
        source = stream_array_source(streams, labels, {"label": 10 if i == 0 else 3}, name=name)
        parts.append((DataSpec(name, source), {"label": name}))
    return TrainingData({"a": 10, "b": 3}, parts, list(weights)) if len(parts) == 2 else \
        TrainingData({"a": 10}, parts, list(weights))


def test_cofinetuning_mixture_and_modality_dropout_per_replica_equal_the_global_batch():
    data = _stream_data()
    kwargs = dict(seed=3, start_step=2, modality_dropout={"audio": 0.5, "rgb": 0.3})
    steps, batch = 6, 8
    global_batches = [_numpy(e) for e in data.train_dataset(batch, **kwargs).take(steps)]
    for pipelines, replicas in ((1, 2), (2, 4)):
        per_replica = _by_replica(lambda ctx: data.train_dataset(batch, input_context=ctx, **kwargs),
                                  pipelines, replicas, steps)
        _assert_replicas_slice(global_batches, per_replica, batch // replicas)
    # the check means something: both datasets were drawn and streams were dropped
    assert {int(np.abs(b[1]["b"]).sum() > 0) for b in global_batches} == {0, 1}
    from mtv.models.missing import MISSING_VALUE

    assert any((b[0]["audio"] == MISSING_VALUE).all(axis=(1, 2, 3)).any() for b in global_batches)


def _mixup_lambda(mixed_y: np.ndarray, y: np.ndarray) -> float:
    """The lambda of `mixed_y = lam * y + (1 - lam) * reverse(y)`, by least squares."""
    d = y - y[::-1]
    return float(((mixed_y - y[::-1]) * d).sum() / (d * d).sum())


def test_mixup_per_replica_uses_the_step_lambda_within_each_replica_batch():
    data = _stream_data(weights=(1.0,))
    steps, batch, pipelines, replicas = 3, 8, 1, 2
    plain = _by_replica(lambda ctx: data.train_dataset(batch, seed=4, input_context=ctx), pipelines, replicas, steps)
    mixed = _by_replica(lambda ctx: data.train_dataset(batch, seed=4, mixup_alpha=0.4, input_context=ctx),
                        pipelines, replicas, steps)
    one_device = [(_numpy(m), _numpy(p)) for m, p in zip(data.train_dataset(batch, seed=4, mixup_alpha=0.4).take(steps),
                                                         data.train_dataset(batch, seed=4).take(steps), strict=True)]
    lambdas = []
    for step in range(steps):
        lam = _mixup_lambda(one_device[step][0][1], one_device[step][1][1])
        lambdas.append(lam)
        for replica in range(replicas):
            (mx, my), (x, y) = mixed[step, replica], plain[step, replica]
            assert _mixup_lambda(my, y) == pytest.approx(lam, abs=1e-5)  # the step's lambda on every replica
            for stream in x:  # each replica batch is mixed with its own reverse (Scenic's per-device mixup)
                np.testing.assert_allclose(mx[stream], lam * x[stream] + (1 - lam) * x[stream][::-1],
                                           rtol=1e-5, atol=1e-5)
    assert len(set(np.round(lambdas, 4))) == steps


# ------------------------------------------------------------------------------ TFRecords
NUM_RECORDS = 16
TFR_OVERRIDES = {k: v for k, v in OVERRIDES.items() if not k.startswith("dataset_configs")}


def _record_value(i: int) -> int:
    return 20 + 12 * i  # each example's frames have their own mean level, read back as its id


@pytest.fixture(scope="module")
def tfrecord_config(tmp_path_factory):
    """A config training the tiny MTV on 16 TFRecord examples, written as JSON for `mtv train`."""
    from mtv.data.tfrecord import ClipExample, write_tfrecords

    records = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(2)
    examples = []
    for i in range(NUM_RECORDS):
        noise = rng.integers(-5, 6, (10, 40, 40, 3))
        frames = np.clip(_record_value(i) + noise, 0, 255).astype(np.uint8)
        examples.append(ClipExample(id=f"ex{i}", frames=frames, labels={"label": [i % 4]}))
    write_tfrecords(examples, records, name="train", num_shards=2)
    config = load_config(str(TINY))
    config.dataset_name = "video_tfrecord_dataset"
    dc = config.dataset_configs
    del dc["synthetic"]
    dc.num_classes = 4
    dc.base_dir = str(records)
    dc.tables = {"train": "train-*.tfrecord"}
    for key, value in TFR_OVERRIDES.items():
        *path, leaf = key.split(".")
        target = config
        for part in path:
            target = target[part]
        target[leaf] = value
    path = records / "config.json"
    path.write_text(config.to_json(indent=1))
    return path


def _read_ids(frames: np.ndarray) -> list[int]:
    levels = (frames.reshape(len(frames), -1).mean(axis=1) + 1) * 127.5  # zero-centred [-1, 1] back to [0, 255]
    ids = np.rint((levels - _record_value(0)) / (_record_value(1) - _record_value(0))).astype(int)
    assert np.abs(levels - [_record_value(i) for i in ids]).max() < 3  # really one example's level
    return ids.tolist()


def _tfrecord_data(config_path: Path):
    from mtv.data.datasets import build_datasets

    return build_datasets(load_config(str(config_path)), config_path.parent / "workdir")


@pytest.fixture(scope="module")
def tfrecord_reads(tfrecord_config) -> tuple:
    """(the source, ids each of two workers' pipelines read in the first epoch's steps, checked to be the
    one-device stream's positions of their replicas)."""
    data = _tfrecord_data(tfrecord_config)
    batch, steps = 8, NUM_RECORDS // 8
    one_device = [_read_ids(x.numpy()) for x, _ in data.train_dataset(batch, seed=0).take(steps)]
    per_replica = _by_replica(lambda ctx: data.train_dataset(batch, seed=0, input_context=ctx), 2, 2, steps)
    read = {0: [], 1: []}
    for (step, replica), (x, _) in sorted(per_replica.items()):
        ids = _read_ids(x)
        assert ids == one_device[step][replica * 4:(replica + 1) * 4]  # the positions one device reads there
        read[replica].extend(ids)  # one replica per worker: replica r is worker r's pipeline
    return data.parts[0][0].source, read


def test_tfrecord_pipelines_read_the_positions_of_their_replicas(tfrecord_reads):
    _, read = tfrecord_reads
    assert read[0] != read[1]


def test_tfrecord_pipelines_read_disjoint_examples_that_cover_the_data(tfrecord_reads):
    source, read = tfrecord_reads
    if not source.per_pipeline:
        pytest.skip("tfrecord_source does not take input_context yet (the TFRecord reader rewrite, "
                    "mtv/data/tfrecord.py, is another helper's work): every worker reads all shards, and the "
                    "shuffle buffer mixes epochs, so the first epoch's steps need not hold each example once")
    assert not set(read[0]) & set(read[1])
    assert sorted(read[0] + read[1]) == list(range(NUM_RECORDS))


def _graph_ops(dataset: tf.data.Dataset) -> set[str]:
    from tensorflow.core.framework import graph_pb2

    graph = graph_pb2.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


RECORD_READERS = {"TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2"}


def test_the_tfrecord_training_pipeline_holds_no_python_function(tfrecord_config):
    data = _tfrecord_data(tfrecord_config)
    if not data.parts[0][0].source.per_pipeline:
        pytest.skip("tfrecord_source does not take input_context yet (the TFRecord reader rewrite, "
                    "mtv/data/tfrecord.py, is another helper's work); its pipelines slice global batches")
    for ctx in (None, _context(2, 1, 2)):
        ops = _graph_ops(data.train_dataset(8, seed=0, mixup_alpha=0.3, input_context=ctx))
        assert ops & RECORD_READERS and "DecodeJpeg" in ops, sorted(ops)  # the records are read and decoded here
        assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless", "GeneratorDataset"}, sorted(ops)


def test_a_python_function_in_a_pipeline_is_seen():
    ops = _graph_ops(tf.data.Dataset.range(3).map(lambda v: tf.numpy_function(lambda a: a, [v], tf.int64)))
    assert {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & ops


def test_two_workers_on_tfrecords_match_one_replica(tfrecord_config, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    workdir = tmp_path / "multi_worker"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [sys.executable, "-m", "mtv.cli", "train", f"--config={tfrecord_config}", f"--workdir={workdir}",
                "--verbose=0", "--strategy=multi_worker"]
        procs.append(subprocess.Popen(args, cwd=REPO, env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    reference = tmp_path / "one_replica"

    def one_replica():
        losses = [s["loss"] for s in train(load_config(str(tfrecord_config)), reference).history]
        assert len(set(np.round(losses, 4))) > 3
        return losses

    losses, outputs = _outputs(procs, one_replica)
    _assert_same_run(workdir, reference, losses)
    assert "step 6/6" in outputs[1]
