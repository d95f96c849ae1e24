"""TFRecord writing, parsing and the tf.data reader: round trips, layouts, skipped records, modalities."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mtv.data import audio as audio_lib
from mtv.data import flow as flow_lib
from mtv.data.sampling import eval_clip_indices
from mtv.data.tfrecord import (
    ClipExample,
    SkipCounter,
    count_records,
    make_dataset,
    parse_example,
    resolve_files,
    serialize_example,
    write_tfrecords,
)
from mtv.data.transforms import video_to_eval_views
from mtv.errors import ConfigError, DataError

CONFIG = {"num_frames": 4, "stride": 1, "min_resize": 24, "crop_size": 16, "zero_centering": True,
          "num_test_clips": 2, "do_three_spatial_crops": True,
          "augmentation_params": {"do_jitter_scale": True, "scale_min_factor": 0.9, "scale_max_factor": 1.33,
                                  "prob_scale_jitter": 1.0, "do_color_augment": True,
                                  "prob_color_augment": 0.8, "prob_color_drop": 0.1}}
IDS = ("a", "b", "c")


def _frames(num: int, level: int) -> np.ndarray:
    """Smooth frames (JPEG keeps them within a few levels) that change over time."""
    y, x = np.meshgrid(np.arange(24), np.arange(32), indexing="ij")
    return np.stack([np.stack([x * 4 + t, y * 5, np.full_like(x, level)], -1) for t in range(num)]).astype(np.uint8)


def _examples() -> list[ClipExample]:
    rng = np.random.default_rng(0)
    out = []
    for i, (name, num) in enumerate(zip(IDS, (6, 9, 12), strict=True)):
        frames = _frames(num, 40 + 80 * i)
        out.append(ClipExample(
            id=name, frames=frames, labels={"label": [i], "verb": [i + 3], "noun": [2 * i]},
            label_strings={"label": [f"class {i}"]}, fps=10.0, media_id=f"{name}.mp4",
            audio=rng.standard_normal(num * 1600).astype(np.float32) * 0.1, sample_rate=16000,
            flow=flow_lib.quantize(np.full((num - 1, 24, 32, 2), [1.5 * (i + 1), -2.0]))))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    return write_tfrecords(_examples(), out, name="toy", num_shards=2)


def _records(paths) -> dict[str, bytes]:
    records = [r.numpy() for p in paths for r in tf.data.TFRecordDataset(str(p))]
    return {parse_example(r).id: r for r in records}


def test_shard_names_and_counts(shards):
    assert [p.name for p in shards] == ["toy-00000-of-00002.tfrecord", "toy-00001-of-00002.tfrecord"]
    assert count_records(shards[0].parent / "toy@2") == 3
    assert [count_records(p) for p in shards] == [2, 1]  # round robin


def test_round_trip_keeps_frames_labels_audio_and_flow(shards):
    records = _records(shards)
    for original in _examples():
        back = parse_example(records[original.id])
        assert back.frames.shape == original.frames.shape
        assert np.abs(back.frames.astype(int) - original.frames).mean() < 2.0
        assert back.labels == original.labels
        assert back.label_strings == {"label": original.label_strings["label"]}
        assert back.fps == pytest.approx(10.0) and back.media_id == original.media_id
        np.testing.assert_array_equal(back.audio, original.audio)
        assert back.sample_rate == 16000
        assert back.flow.shape == original.flow.shape
        assert np.abs(back.flow.astype(int) - original.flow).max() <= 2


def test_serialized_keys_follow_the_documented_layout():
    seq = tf.train.SequenceExample.FromString(serialize_example(_examples()[1]))
    context = seq.context.feature
    assert context["clip/label/index"].int64_list.value == [1]
    assert context["clip/label/verb/index"].int64_list.value == [4]
    assert context["clip/label/noun/index"].int64_list.value == [2]
    assert context["clip/label/string"].bytes_list.value == [b"class 1"]
    assert context["example/id"].bytes_list.value == [b"b"]
    lists = seq.feature_lists.feature_list
    assert len(lists["image/encoded"].feature) == 9
    assert len(lists["FORWARD_FLOW/image/encoded"].feature) == 8
    assert len(lists["WAVEFORM/feature/floats"].feature[0].float_list.value) == 9 * 1600


def test_train_dataset(shards):
    ds = make_dataset(shards[0].parent / "toy@2", dataset_configs=CONFIG, is_train=True, batch_size=2,
                      num_classes=3, seed=0, with_ids=True)
    seen = set()
    for images, labels, ids in ds.take(4):
        assert images.shape == (2, 4, 16, 16, 3) and images.dtype == tf.float32
        assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert labels.shape == (2, 3)
        for label, example_id in zip(labels.numpy(), ids.numpy(), strict=True):
            assert IDS[int(np.argmax(label))] == example_id.decode() and label.sum() == 1.0
            seen.add(example_id.decode())
    assert seen == set(IDS)
    assert ds.skip_counter.count == 0


def test_train_dataset_is_deterministic_with_a_seed(shards):
    def first(seed):
        ds = make_dataset(shards, dataset_configs=CONFIG, is_train=True, batch_size=3, num_classes=3, seed=seed)
        return next(iter(ds))[0].numpy()

    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))


def test_eval_dataset_matches_video_to_eval_views(shards):
    ds = make_dataset(str(shards[0].parent / "toy-*.tfrecord"), dataset_configs=CONFIG, is_train=False,
                      batch_size=2, num_classes=3, with_ids=True)
    records = _records(shards)
    got = {}
    for images, labels, ids in ds:
        assert images.shape[1:] == (6, 4, 16, 16, 3)  # 2 clips x 3 crops
        for image, label, example_id in zip(images.numpy(), labels.numpy(), ids.numpy(), strict=True):
            got[example_id.decode()] = (image, label)
    assert sorted(got) == list(IDS)  # each example exactly once
    for example_id, (image, label) in got.items():
        frames = parse_example(records[example_id]).frames
        expected = video_to_eval_views(frames, num_frames=4, stride=1, num_clips=2, crop_size=16, min_resize=24,
                                       three_crops=True)
        np.testing.assert_allclose(image, expected, atol=1e-6)
        assert int(np.argmax(label)) == IDS.index(example_id)


def test_epic_style_named_labels(shards):
    ds = make_dataset(shards, dataset_configs=CONFIG, is_train=False, batch_size=3,
                      label_names=("verb", "noun"), num_classes={"verb": 6, "noun": 5}, with_ids=True)
    _, labels, ids = next(iter(ds))
    assert set(labels) == {"verb", "noun"}
    assert labels["verb"].shape == (3, 6) and labels["noun"].shape == (3, 5)
    for row, example_id in enumerate(ids.numpy()):
        i = IDS.index(example_id.decode())
        assert int(np.argmax(labels["verb"][row])) == i + 3 and int(np.argmax(labels["noun"][row])) == 2 * i


def test_unlabelled_dataset_yields_inputs_only(shards):
    batch = next(iter(make_dataset(shards, dataset_configs=CONFIG, is_train=False, batch_size=3, label_names=())))
    assert isinstance(batch, tf.Tensor) and batch.shape == (3, 6, 4, 16, 16, 3)


def test_flow_and_audio_modalities(shards):
    cfg = dict(CONFIG, num_test_clips=2, do_three_spatial_crops=False, audio={"num_frames": 30},
               flow={"num_frames": 3})
    ds = make_dataset(shards, dataset_configs=cfg, is_train=False, batch_size=3, num_classes=3, with_ids=True,
                      modalities=("rgb", "flow", "audio"))
    inputs, _, ids = next(iter(ds))
    assert inputs["rgb"].shape == (3, 2, 4, 16, 16, 3)
    assert inputs["flow"].shape == (3, 2, 3, 16, 16, 2)
    assert inputs["audio"].shape == (3, 2, 30, 128, 1)
    examples = {e.id: e for e in _examples()}
    for row, example_id in enumerate(ids.numpy()):
        example = examples[example_id.decode()]
        i = IDS.index(example.id)
        # Constant flow of (1.5 (i + 1), -2) px survives quantisation, cropping and the 24 -> 24 resize.
        np.testing.assert_allclose(inputs["flow"][row, ..., 0].numpy() * 20, 1.5 * (i + 1), atol=0.35)
        np.testing.assert_allclose(inputs["flow"][row, ..., 1].numpy() * 20, -2.0, atol=0.35)
        # The log-mel of each clip starts at the clip's first frame.
        clips = eval_clip_indices(example.frames.shape[0], 4, 1, 2)
        for c, clip in enumerate(clips):
            wave = audio_lib.clip_waveform(example.audio, 16000, 10.0, clip, audio_lib.AudioConfig(), 30)
            expected = audio_lib.log_mel_spectrogram(wave).numpy()
            np.testing.assert_allclose(inputs["audio"][row, c, :, :, 0].numpy(), expected, atol=1e-3)


def test_train_modalities_shapes(shards):
    cfg = dict(CONFIG, audio={"num_frames": 20})
    inputs, _ = next(iter(make_dataset(shards, dataset_configs=cfg, is_train=True, batch_size=2, num_classes=3,
                                       seed=1, modalities=("rgb", "flow", "audio"))))
    assert inputs["rgb"].shape == (2, 4, 16, 16, 3)
    assert inputs["flow"].shape == (2, 4, 16, 16, 2)
    assert inputs["audio"].shape == (2, 20, 128, 1)


def test_corrupt_records_are_skipped_and_counted(tmp_path):
    good = _examples()
    bad_jpeg = tf.train.SequenceExample.FromString(serialize_example(good[0]))
    bad_jpeg.context.feature["example/id"].bytes_list.value[0] = b"broken-jpeg"
    bad_jpeg.feature_lists.feature_list["image/encoded"].feature[2].bytes_list.value[0] = b"\xff\xd8garbage"
    out_of_range = ClipExample(id="label-99", frames=good[1].frames, labels={"label": [99]})
    with tf.io.TFRecordWriter(str(tmp_path / "mixed-00000-of-00002.tfrecord")) as writer:
        writer.write(serialize_example(good[0]))
        writer.write(b"this is not a SequenceExample")
        writer.write(bad_jpeg.SerializeToString())
        writer.write(serialize_example(out_of_range))
        writer.write(serialize_example(good[1]))
    # A second shard cut in the middle of its second record.
    second = tmp_path / "second.tfrecord"
    with tf.io.TFRecordWriter(str(second)) as writer:
        writer.write(serialize_example(good[2]))
        writer.write(serialize_example(good[0]))
    data = second.read_bytes()
    (tmp_path / "mixed-00001-of-00002.tfrecord").write_bytes(data[: len(data) - 500])
    second.unlink()

    counter = SkipCounter()
    cfg = dict(CONFIG, num_test_clips=1, do_three_spatial_crops=False)
    ds = make_dataset(tmp_path / "mixed@2", dataset_configs=cfg, is_train=False, batch_size=2, num_classes=3,
                      with_ids=True, skip_counter=counter)
    ids = [i.decode() for _, _, batch_ids in ds for i in batch_ids.numpy()]
    assert ids == ["a", "b", "c"]
    assert counter.count == 4
    reasons = "\n".join(counter.reasons)
    assert "not a tf.train.SequenceExample" in reasons
    assert "broken-jpeg" in reasons and "frame 2 is not a decodable JPEG" in reasons
    assert "label 'label' [99] is outside [0, 3)" in reasons
    assert "mixed-00001-of-00002.tfrecord' is corrupt after record 1" in reasons


def test_file_and_config_errors(shards, tmp_path):
    with pytest.raises(DataError, match="no TFRecord files match"):
        resolve_files(str(tmp_path / "nothing-*.tfrecord"))
    (tmp_path / "two-00000-of-00003.tfrecord").write_bytes(b"")
    (tmp_path / "two-00001-of-00003.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match="1 of 3 shards are missing"):
        resolve_files(tmp_path / "two@3")
    with pytest.raises(ConfigError, match="num_classes"):
        make_dataset(shards, dataset_configs=CONFIG, is_train=True, batch_size=2)
    with pytest.raises(ConfigError, match="no entry for labels"):
        make_dataset(shards, dataset_configs=CONFIG, is_train=True, batch_size=2, label_names=("verb", "noun"),
                     num_classes={"verb": 97})
    with pytest.raises(ConfigError, match="modalities"):
        make_dataset(shards, dataset_configs=CONFIG, is_train=True, batch_size=2, num_classes=3,
                     modalities=("rgb", "depth"))
    with pytest.raises(ConfigError, match="unknown fields"):
        make_dataset(shards, dataset_configs=dict(CONFIG, audio={"n_mels": 64}), is_train=True, batch_size=2,
                     num_classes=3, modalities=("rgb", "audio"))
    with pytest.raises(DataError, match="frames must be uint8"):
        serialize_example(ClipExample(id="x", frames=np.zeros((2, 4, 4, 3), np.float32)))


def _indexed_example(example_id: str, num: int = 12, with_audio: bool = True) -> ClipExample:
    """Flat frames and flow whose levels name their index (RGB 10 + 20 t, flow v 100 + 8 t), noise audio."""
    frames = np.stack([np.full((24, 32, 3), 10 + 20 * t, np.uint8) for t in range(num)])
    flow = np.stack([np.stack([np.full((24, 32), 128), np.full((24, 32), 100 + 8 * t)], -1) for t in range(num - 1)])
    audio = np.random.default_rng(3).standard_normal(num * 1600).astype(np.float32) * 0.1 if with_audio else None
    return ClipExample(id=example_id, frames=frames, labels={"label": [0]}, fps=10.0, flow=flow.astype(np.uint8),
                       audio=audio, sample_rate=16000 if with_audio else None)


def test_train_flow_and_audio_are_those_of_the_sampled_rgb_clip(tmp_path):
    example = _indexed_example("indexed")
    files = write_tfrecords([example], tmp_path, name="indexed")
    cfg = {"num_frames": 4, "stride": 2, "min_resize": 24, "crop_size": 16, "audio": {"num_frames": 30}}
    ds = make_dataset(files, dataset_configs=cfg, is_train=True, batch_size=8, num_classes=1, seed=4,
                      modalities=("rgb", "flow", "audio"))
    inputs, _ = next(iter(ds))
    starts = set()
    for rgb, flow, spectrogram in zip(inputs["rgb"].numpy(), inputs["flow"].numpy(), inputs["audio"].numpy(),
                                      strict=True):
        rgb_index = np.round(((rgb.mean(axis=(1, 2, 3)) + 1) * 127.5 - 10) / 20).astype(int)
        start = rgb_index[0]
        starts.add(start)
        np.testing.assert_array_equal(rgb_index, start + 2 * np.arange(4))  # the sampled clip (no wrap at 12)
        flow_index = np.round((flow[..., 1].mean(axis=(1, 2)) * 128 + 128 - 100) / 8).astype(int)
        # Flow frame t is the motion from RGB frame t to t + 1; the last RGB frame (11) has none and reuses 10.
        np.testing.assert_array_equal(flow_index, np.minimum(rgb_index, 10))
        wave = audio_lib.clip_waveform(example.audio, 16000, 10.0, rgb_index, audio_lib.AudioConfig(), 30)
        np.testing.assert_allclose(spectrogram[..., 0], audio_lib.log_mel_spectrogram(wave).numpy(), atol=1e-3)
    assert len(starts) > 1  # several random clips were checked, not one


def test_records_without_a_needed_modality_are_refused_by_name(tmp_path):
    plain = ClipExample(id="rgb-only", frames=_frames(6, 40), labels={"label": [0]})
    files = write_tfrecords([plain], tmp_path, name="plain")
    for is_train in (True, False):
        with pytest.raises(DataError, match=r"record 'rgb-only' has no flow \('FORWARD_FLOW/image/encoded'\), audio "
                                            r"\('WAVEFORM/feature/floats'\).*mtv data prepare \.\.\. --flow --audio"):
            make_dataset(files, dataset_configs=CONFIG, is_train=is_train, batch_size=1, num_classes=1,
                         modalities=("rgb", "flow", "audio"))
    next(iter(make_dataset(files, dataset_configs=CONFIG, is_train=False, batch_size=1, num_classes=1)))  # RGB: fine


def test_a_record_missing_a_modality_among_others_is_skipped_and_counted(tmp_path):
    files = write_tfrecords([_indexed_example("with-audio"), _indexed_example("no-audio", with_audio=False)],
                            tmp_path, name="mixed")
    counter = SkipCounter()
    cfg = dict(CONFIG, num_test_clips=1, do_three_spatial_crops=False, audio={"num_frames": 10})
    ds = make_dataset(files, dataset_configs=cfg, is_train=False, batch_size=2, num_classes=1, with_ids=True,
                      modalities=("rgb", "audio"), skip_counter=counter)
    ids = [i.decode() for _, _, batch in ds for i in batch.numpy()]
    assert ids == ["with-audio"] and counter.count == 1
    assert "example 'no-audio' has no 'WAVEFORM/feature/floats' waveform" in counter.reasons[0]
