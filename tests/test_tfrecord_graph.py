"""The in-graph TFRecord reader: host parity, no Python in the graph, resume, per-pipeline split, epochs, skips."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import tensorflow as tf

from mtv.data import audio as audio_lib
from mtv.data import flow as flow_lib
from mtv.data import record_index, sampling, transforms
from mtv.data.config import data_config
from mtv.data.sources import tfrecord_source
from mtv.data.tfrecord import (
    MAX_ATTEMPTS,
    ClipExample,
    SkipCounter,
    _Order,
    make_dataset,
    parse_example,
    serialize_example,
    write_tfrecords,
)
from mtv.errors import ConfigError, DataError

CONFIG = {"num_frames": 3, "stride": 2, "min_resize": 20, "crop_size": 16, "num_test_clips": 2,
          "do_three_spatial_crops": True,
          "augmentation_params": {"do_jitter_scale": True, "do_color_augment": True, "prob_color_drop": 0.2}}
TRAIN = dict(CONFIG, num_test_clips=1, do_three_spatial_crops=False)
PLAIN = dict(TRAIN, augmentation_params={})  # random clip, crop and flip only: quicker to trace
NUM = 8


def _frames(num: int, level: int) -> np.ndarray:
    y, x = np.meshgrid(np.arange(20), np.arange(28), indexing="ij")
    return np.stack([np.stack([x * 7 + 9 * t, y * 11, np.full_like(x, level)], -1)
                     for t in range(num)]).astype(np.uint8)


def _example(i: int, label: int | None = None) -> ClipExample:
    num = 5 + i
    rng = np.random.default_rng(i)
    return ClipExample(id=f"v{i}", frames=_frames(num, 30 * i), labels={"label": [i % 3 if label is None else label]},
                       fps=10.0, audio=rng.standard_normal(num * 1600).astype(np.float32) * 0.1, sample_rate=16000,
                       flow=flow_lib.quantize(rng.normal(0, 3, (num - 1, 20, 28, 2))))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return [str(p) for p in write_tfrecords([_example(i) for i in range(NUM)], tmp_path_factory.mktemp("graph"),
                                            name="g", num_shards=2)]


def _records(files) -> list[bytes]:
    index = record_index.build_index(files)
    return [index.read(i) for i in range(len(index))]


def _ops(ds: tf.data.Dataset) -> set[str]:
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph(
        external_state_policy=tf.data.experimental.ExternalStatePolicy.IGNORE).numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset"}


def _assert_no_python(ds: tf.data.Dataset) -> None:
    ops = _ops(ds)
    assert "FixedLengthRecordDatasetV2" in ops and "DecodeJpeg" in ops  # the graph was really inspected
    assert not ops & PYTHON_OPS, ops & PYTHON_OPS


def test_the_python_check_finds_python():
    generated = tf.data.Dataset.from_generator(lambda: iter([1]), output_signature=tf.TensorSpec([], tf.int32))
    assert _ops(generated.map(lambda x: tf.numpy_function(lambda v: v, [x], tf.int32))) & PYTHON_OPS


def test_eval_matches_the_host_decode(shards):
    cfg = dict(CONFIG, audio={"num_frames": 5})
    ds = make_dataset(shards, dataset_configs=cfg, is_train=False, batch_size=4, num_classes=3, with_ids=True,
                      modalities=("rgb", "flow", "audio"))
    _assert_no_python(ds)
    config = data_config(cfg)
    seen = []
    for inputs, labels, ids in ds:
        for row, example_id in enumerate(ids.numpy()):
            i = int(example_id.decode()[1:])
            seen.append(i)
            example = parse_example(serialize_example(_example(i)))
            clips = sampling.eval_clip_indices(len(example.frames), 3, 2, 2)
            expected = transforms.eval_transform(example.frames[clips], config)
            np.testing.assert_allclose(inputs["rgb"][row].numpy(), expected, atol=1e-6)  # same JPEG bytes decoded
            flow = flow_lib.resize_flow(flow_lib.dequantize(example.flow), 20, 28)
            picks = np.minimum(clips, len(example.flow) - 1)
            want_flow = transforms.eval_transform(flow[picks], config, is_flow=True)
            np.testing.assert_allclose(inputs["flow"][row].numpy(), want_flow, atol=1e-5)
            for c, clip in enumerate(clips):
                wave = audio_lib.clip_waveform(example.audio, 16000, 10.0, clip, audio_lib.AudioConfig(), 5)
                want = audio_lib.log_mel_spectrogram(wave).numpy()
                np.testing.assert_allclose(inputs["audio"][row, 3 * c, ..., 0].numpy(), want, atol=2e-3)
            assert int(np.argmax(labels[row])) == i % 3
    assert seen == list(range(0, NUM, 2)) + list(range(1, NUM, 2))  # every record once, in file order


def test_train_matches_the_host_decode_for_the_same_indices_and_seed(shards):
    seed, batch = 7, 4
    ds = make_dataset(shards, dataset_configs=dict(TRAIN, audio={"num_frames": 5}), is_train=True, batch_size=batch,
                      num_classes=3, seed=seed, with_ids=True, modalities=("rgb", "flow", "audio"))
    _assert_no_python(ds)
    records = _records(shards)
    order, config = _Order(len(records), seed), data_config(TRAIN)
    for step, (inputs, _, ids) in enumerate(ds.take(2)):
        images = inputs["rgb"]
        for row in range(batch):
            position = step * batch + row
            example = parse_example(records[int(order.record(position))])
            assert ids[row].numpy().decode() == example.id
            element_seed = order.augment_seed(position)
            indices = sampling.train_clip_indices_tf(len(example.frames), 3, 2, element_seed).numpy()
            assert set(indices) <= set(range(len(example.frames)))
            want = transforms.train_transform(tf.constant(example.frames[indices]), config, element_seed)
            np.testing.assert_allclose(images[row].numpy(), want.numpy(), atol=1e-6)


def test_tf_sampling_audio_and_flow_match_numpy():
    for total in (1, 5, 17, 64, 301):
        for clips in (1, 2, 3, 4, 10):
            np.testing.assert_array_equal(sampling.eval_clip_indices_tf(total, 8, 2, clips).numpy(),
                                          sampling.eval_clip_indices(total, 8, 2, clips))
        starts = {int(sampling.train_clip_indices_tf(total, 4, 3, [s, 1])[0]) for s in range(40)}
        assert starts <= set(range(max(total - 9, 1))) and (len(starts) > 1 or total <= 10)
        drawn = sampling.train_clip_indices_tf(total, 4, 3, [1, 1]).numpy()
        np.testing.assert_array_equal(drawn, sampling.clip_indices(int(drawn[0]), total, 4, 3))
    audio = np.random.default_rng(0).standard_normal(30000).astype(np.float32)
    for indices, frames in (([3, 5, 7], 12), ([20, 22, 0], None), ([1, 2, 3], None), ([40, 41, 42], 3)):
        want = audio_lib.clip_waveform(audio, 16000, 25.0, np.array(indices), audio_lib.AudioConfig(), frames)
        got = audio_lib.clip_waveform_tf(audio, 16000, 25.0, indices, audio_lib.AudioConfig(), frames)
        np.testing.assert_array_equal(got.numpy(), want)
    # In-graph resampling is band-limited: a tone below both Nyquist rates comes out as the same tone.
    tone = lambda rate: np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)  # noqa: E731
    np.testing.assert_allclose(audio_lib.resample_tf(tone(22050), 22050, 16000).numpy(), tone(16000), atol=1e-4)
    flow = np.random.default_rng(1).uniform(-1, 1, (2, 9, 13, 2)).astype(np.float32)
    np.testing.assert_allclose(flow_lib.resize_flow_tf(tf.constant(flow), 18, 20).numpy(),
                               flow_lib.resize_flow(flow, 18, 20), atol=2e-3)


def test_resume_starts_at_once_and_continues_the_stream(shards):
    source = tfrecord_source(shards, PLAIN, {"label": 3})
    run = [x.numpy() for x, _ in source.make(2, 0, 3).take(5)]  # also warms TensorFlow up

    def first_batch(step: int) -> tuple[float, list[np.ndarray]]:
        start = time.perf_counter()
        batches = iter(source.make(2, step, 3))
        first = next(batches)[0].numpy()
        return time.perf_counter() - start, [first, next(batches)[0].numpy()]

    at_start, _ = first_batch(0)
    at_10000, _ = first_batch(10_000)
    assert at_10000 < 2 * at_start, (at_start, at_10000)  # skipping 10,000 batches would take minutes
    _, resumed = first_batch(3)
    np.testing.assert_array_equal(resumed[0], run[3])
    np.testing.assert_array_equal(resumed[1], run[4])
    assert not np.array_equal(run[3], run[4])


def test_two_pipelines_split_the_global_batch_in_order(shards):
    def take(context, steps):
        ds = make_dataset(shards, dataset_configs=PLAIN, is_train=True, batch_size=8, num_classes=3, seed=2,
                          with_ids=True, input_context=context, start_position=16)
        return [(x.numpy(), i.numpy()) for x, _, i in ds.take(steps)]

    whole = take(None, 2)
    parts = [take(tf.distribute.InputContext(2, p, 4), 4) for p in (0, 1)]
    for step in range(2):
        # Per-replica batches of 2: pipeline 0 feeds replicas 0 and 1, pipeline 1 replicas 2 and 3, in turn.
        rows = [parts[p][2 * step + r] for p in (0, 1) for r in (0, 1)]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in rows]), whole[step][0])
        np.testing.assert_array_equal(np.concatenate([i for _, i in rows]), whole[step][1])
        # A global batch of N positions from an N-aligned start is one whole epoch: every record once.
        firsts, seconds = (set(np.concatenate([i for _, i in rows[2 * p:2 * p + 2]]).tolist()) for p in (0, 1))
        assert not firsts & seconds and len(firsts | seconds) == NUM


def test_every_epoch_visits_every_record_once_in_its_own_order(shards):
    def ids(seed, repeat=None):
        ds = make_dataset(shards, dataset_configs=PLAIN, is_train=True, batch_size=4, num_classes=3, seed=seed,
                          with_ids=True, repeat=repeat)
        return [i.decode() for _, _, batch in ds.take(NUM) for i in batch.numpy()]

    everything = sorted(f"v{i}" for i in range(NUM))
    first = ids(11)
    epochs = [first[e * NUM:(e + 1) * NUM] for e in range(4)]
    for epoch in epochs:
        assert sorted(epoch) == everything
    assert len({tuple(e) for e in epochs}) > 1  # each epoch has its own order
    once = ids(12, repeat=False)  # one epoch, then the end
    assert sorted(once) == everything and once != epochs[0]


def _bad_files(tmp_path):
    """Shard 0: good, not a proto, a broken JPEG, label 99, good. Shard 1: good, then a record cut short."""
    good = [_example(i) for i in range(3)]
    broken = tf.train.SequenceExample.FromString(serialize_example(good[0]))
    broken.context.feature["example/id"].bytes_list.value[0] = b"broken-jpeg"
    for f in broken.feature_lists.feature_list["image/encoded"].feature:
        f.bytes_list.value[0] = b"\xff\xd8garbage"
    with tf.io.TFRecordWriter(str(tmp_path / "bad-00000-of-00002.tfrecord")) as writer:
        writer.write(serialize_example(good[0]))
        writer.write(b"this is not a SequenceExample")
        writer.write(broken.SerializeToString())
        writer.write(serialize_example(_example(5, label=99)))
        writer.write(serialize_example(good[1]))
    whole = tmp_path / "whole.tfrecord"
    with tf.io.TFRecordWriter(str(whole)) as writer:
        writer.write(serialize_example(good[2]))
        writer.write(serialize_example(good[0]))
    data = whole.read_bytes()
    (tmp_path / "bad-00001-of-00002.tfrecord").write_bytes(data[:-300])
    whole.unlink()
    return [str(tmp_path / f"bad-0000{i}-of-00002.tfrecord") for i in (0, 1)]


def test_bad_records_are_skipped_counted_and_named(tmp_path):
    files = _bad_files(tmp_path)
    counter = SkipCounter()
    ds = make_dataset(files, dataset_configs=PLAIN, is_train=False, batch_size=2, num_classes=3, with_ids=True,
                      skip_counter=counter)
    assert [i.decode() for _, _, b in ds for i in b.numpy()] == ["v0", "v1", "v2"]
    assert counter.count == 4
    reasons = "\n".join(counter.reasons)
    assert f"'{files[0]}' record 1 (byte " in reasons and "not a tf.train.SequenceExample" in reasons
    assert "example 'broken-jpeg': frame 0 is not a decodable JPEG" in reasons
    assert "example 'v5': label 'label' [99] is outside [0, 3)" in reasons
    assert f"'{files[1]}' is corrupt after record 1" in reasons and "truncated file" in reasons

    # Training: bad records are replaced by the next of the epoch's order; the count is the failed attempts
    # of the batches delivered, exactly.
    counter = SkipCounter()
    ds = make_dataset(files, dataset_configs=PLAIN, is_train=True, batch_size=3, num_classes=3, with_ids=True,
                      seed=5, skip_counter=counter)
    assert counter.count == 1  # the truncated file, at indexing
    index = record_index.build_index(files)
    bad = {1, 2, 3}  # index positions of the three bad records of shard 0
    order = _Order(len(index), 5)
    expected = 1
    for step, (_, _, ids) in enumerate(ds.take(4)):
        for row, example_id in enumerate(ids.numpy()):
            attempts = 0
            while int(order.record(step * 3 + row, attempts)) in bad:
                attempts += 1
            expected += attempts
            assert example_id.decode() in {"v0", "v1", "v2"}
        assert counter.count == expected
    assert expected > 1 and "outside [0, 3)" in "\n".join(counter.reasons)


def test_training_stops_by_name_when_no_record_decodes(tmp_path):
    path = tmp_path / "junk.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"junk one")
        writer.write(b"junk two")
    ds = make_dataset([str(path)], dataset_configs=PLAIN, is_train=True, batch_size=1, num_classes=3, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{MAX_ATTEMPTS} records in a row failed"):
        next(iter(ds))
    with pytest.raises(ConfigError, match="start_position and input_context are for training"):
        make_dataset([str(path)], dataset_configs=PLAIN, is_train=False, batch_size=1, num_classes=3,
                     start_position=4)


def test_index_cuts_files_at_a_bad_header_or_a_truncated_record(tmp_path):
    path = tmp_path / "x.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in (b"first", b"second", b"third"):
            writer.write(data)
    index = record_index.build_index([str(path)])
    assert [index.read(i) for i in range(len(index))] == [b"first", b"second", b"third"] and not index.skipped
    data = bytearray(path.read_bytes())
    data[21 + 8] ^= 0xFF  # the length checksum of record 1 (record 0 is 12 + 5 + 4 = 21 bytes)
    path.write_bytes(bytes(data))
    index = record_index.build_index([str(path)])
    assert len(index) == 1 and "the length header at byte 21 fails its checksum" in index.skipped[0]
    path.write_bytes(struct.pack("<Q", 1000) + bytes(4))
    assert "fails its checksum" in record_index.build_index([str(path)]).skipped[0]
    with pytest.raises(DataError, match="cannot index TFRecord file"):
        record_index.build_index([str(tmp_path / "missing.tfrecord")])
