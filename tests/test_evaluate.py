"""Multi-view evaluation: view rules, top-k and Epic action metrics, TFRecords and CSVs, results files."""

from __future__ import annotations

import csv

import ml_collections
import numpy as np
import pytest

import mtv
from mtv.cli import run
from mtv.data.tfrecord import ClipExample, write_tfrecords
from mtv.epic.results import read_results
from mtv.errors import ConfigError
from mtv.eval import evaluate as ev


def tiny_config(classes: int = 5, class_splits=None, split_names=None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset_configs = ml_collections.ConfigDict({"num_frames": 8, "crop_size": 32, "min_resize": 40, "stride": 1,
                                                   "num_test_clips": 2, "do_three_spatial_crops": True})
    if class_splits:
        c.dataset_configs.class_splits = class_splits
        c.dataset_configs.split_names = split_names
    else:
        c.dataset_configs.num_classes = classes
    c.model = ml_collections.ConfigDict({"classifier": "token", "dropout_rate": 0.0, "attention_dropout_rate": 0.0})
    c.model.view_configs = [
        ml_collections.ConfigDict({"hidden_size": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 1,
                                   "patches": {"size": (8, 8, 4)}}),
        ml_collections.ConfigDict({"hidden_size": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 1,
                                   "patches": {"size": (8, 8, 2)}})]
    c.model.cross_view_fusion = ml_collections.ConfigDict({"type": "cross_view_attention", "fusion_layers": (0,)})
    c.model.global_encoder_config = ml_collections.ConfigDict({"num_heads": 2, "mlp_dim": 32, "num_layers": 1,
                                                               "merge_axis": "channel"})
    return c


def _random_model(config, seed=0):
    model = mtv.build_model(config, seed=seed)
    rng = np.random.default_rng(seed)
    for var in model.flax_params().values():  # a non-zero head, so scores differ between classes
        var.assign(rng.normal(0, 0.3, var.shape).astype(np.float32))
    return model


def _videos(n, seed=0, frames=20):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames + 3 * i, 40, 52, 3), np.uint8) for i in range(n)]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_view_rules():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5))
    scores, kind = ev.combine_views(logits, "logits_mean")
    np.testing.assert_allclose(scores, logits.mean(1), rtol=1e-6)
    assert kind == "logits"
    scores, kind = ev.combine_views(logits, "softmax_mean")
    np.testing.assert_allclose(scores, _softmax(logits).mean(1), rtol=1e-6)
    assert kind == "probabilities"
    with pytest.raises(ConfigError):
        ev.combine_views(logits, "max")


def test_topk_and_epic_action_metrics_agree_with_brute_force():
    rng = np.random.default_rng(1)
    n = 60
    verb, noun = rng.normal(size=(n, 6)) * 2, rng.normal(size=(n, 9)) * 2
    labels = {"verb": rng.integers(0, 6, n), "noun": rng.integers(0, 9, n)}
    metrics = ev.compute_metrics({"verb": verb, "noun": noun}, labels)
    rank = np.argsort(-verb, axis=1)
    assert metrics["verb_top1"] == pytest.approx(100 * np.mean(rank[:, 0] == labels["verb"]))
    assert metrics["verb_top5"] == pytest.approx(100 * np.mean((rank[:, :5] == labels["verb"][:, None]).any(1)))
    joint = (_softmax(verb)[:, :, None] * _softmax(noun)[:, None, :]).reshape(n, -1)  # action = verb x noun
    truth = labels["verb"] * 9 + labels["noun"]
    order = np.argsort(-joint, axis=1)
    assert metrics["action_top1"] == pytest.approx(100 * np.mean(order[:, 0] == truth))
    assert metrics["action_top5"] == pytest.approx(100 * np.mean((order[:, :5] == truth[:, None]).any(1)))


def test_evaluate_tfrecords_matches_scoring_each_view_by_hand(tmp_path):
    import tensorflow as tf

    from mtv.data.tfrecord import parse_example
    from mtv.data.transforms import video_to_eval_views

    config = tiny_config()
    model = _random_model(config)
    videos = _videos(3)
    write_tfrecords([ClipExample(id=f"vid{i}", frames=v, labels={"label": [i % 5]}) for i, v in enumerate(videos)],
                    tmp_path, name="test", num_shards=2)
    dc = ev.eval_dataset_configs(config, model)
    result = ev.evaluate_data(model, str(tmp_path / "test@2"), dataset_configs=dc, batch_size=4)
    assert result.num_views == 6 and sorted(result.ids) == ["vid0", "vid1", "vid2"]
    stored = {}  # frames as the records hold them (JPEG), scored by hand below
    for record in tf.data.TFRecordDataset(sorted(str(p) for p in tmp_path.glob("test-*.tfrecord"))):
        example = parse_example(record.numpy())
        stored[example.id] = example.frames
    for i in range(len(videos)):
        views = video_to_eval_views(stored[f"vid{i}"], num_frames=8, stride=1, num_clips=2, crop_size=32, min_resize=40,
                                    three_crops=True)
        expected = np.asarray(model(views)).mean(0)
        row = list(result.ids).index(f"vid{i}")
        np.testing.assert_allclose(result.outputs["logits"][row], expected, atol=1e-4)
    labels = np.array([int(x[3:]) % 5 for x in result.ids])
    assert result.metrics["top1"] == pytest.approx(ev.topk_accuracy(result.outputs["logits"], labels))
    path = ev.write(result, tmp_path / "scores.npz")
    back = read_results(path)
    assert list(back.ids) == list(result.ids) and back.score_kind == "logits"


def test_cli_multihead_softmax_mean_and_an_unreadable_video(tmp_path, capsys):
    from mtv.data import synthetic
    from mtv.io.presets import save_preset

    config = tiny_config(class_splits=[7, 4], split_names=["noun", "verb"])
    model = _random_model(config, seed=2)
    preset = save_preset(model, tmp_path / "preset", metadata={
        "preprocessing": {"min_resize": 40, "crop_size": 32, "zero_centering": True}, "stride": 1,
        "test_views": "2x1"})
    rows = []
    for i, video in enumerate(_videos(3, seed=4)):
        synthetic.write_video(tmp_path / f"v{i}.avi", video)
        rows.append({"narration_id": f"P01_01_{i}", "video_id": f"v{i}", "start_frame": 1,
                     "stop_frame": len(video), "verb_class": i % 4, "noun_class": (2 * i) % 7})
    (tmp_path / "broken.avi").write_bytes(b"not a video at all")
    rows.append({"narration_id": "P01_01_9", "video_id": "broken", "start_frame": 1, "stop_frame": 5,
                 "verb_class": 0, "noun_class": 0})
    with open(tmp_path / "val.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "scores.npz"
    code = run(["evaluate", f"--checkpoint={preset}", f"--data={tmp_path / 'val.csv'}", f"--out={out}",
                "--rule=softmax_mean"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "3 videos x 2 views" in text and "1 unreadable skipped" in text
    for key in ("verb top1", "noun top1", "action top1"):
        assert key in text
    back = read_results(out, expected={"verb": 4, "noun": 7})  # a tiny model, not Epic's 97 x 300
    assert back.score_kind == "probabilities" and set(back.outputs) == {"verb", "noun"}
    np.testing.assert_allclose(back.outputs["verb"].sum(1), 1.0, rtol=1e-5)
    assert sorted(back.ids) == ["P01_01_0", "P01_01_1", "P01_01_2"]


def test_cli_needs_data_and_one_model(tmp_path, capsys):
    assert run(["evaluate", f"--data={tmp_path}"]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    assert run(["evaluate", "--model=x", f"--checkpoint={tmp_path}", f"--data={tmp_path}"]) == 1
