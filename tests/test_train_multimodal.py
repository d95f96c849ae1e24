"""M&M end to end: training through `mtv train` (data of every stream, mixup, modality dropout, label smoothing,
init from a zoo MTV, exact resume, MirroredStrategy) and `mtv evaluate` (multi-view, the Epic results file, a
missing stream).

Where the time goes: one 4-step run (model build and tracing dominate), its resume from step 2, the same run on
2 replicas in a subprocess started first so that it overlaps the in-process work, and two CLI evaluations of
4 segments x 2 views. The runs leave out stochastic depth, whose masks are drawn per replica (so a 2-replica
run cannot match a 1-replica one); `test_stochastic_depth_masks_resume_with_the_checkpoint` covers it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from mtv.cli import run
from mtv.data import audio as audio_lib
from mtv.data import flow as flow_lib
from mtv.data import mixing, tfrecord, transforms
from mtv.data.config import data_config
from mtv.data.datasets import build_datasets
from mtv.data.sampling import eval_clip_indices
from mtv.errors import ConfigError, DataError
from mtv.io.configs import load_config
from mtv.models.missing import missing_input
from mtv.training import checkpoints as ckpt_lib
from mtv.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SEGMENTS = [  # narration_id, video, start, stop (frames at 30 fps, 1-based), verb, noun
    ("P01_01_0", "eye_makeup_audio__mmaction2_test", 1, 50, 0, 1),
    ("P01_01_1", "eye_makeup_audio__mmaction2_test", 51, 100, 1, 2),
    ("P01_02_0", "flipping_pancake__decord", 1, 60, 2, 3),
    ("P01_02_1", "flipping_pancake__decord", 91, 150, 3, 4),
]


def _view(width, heads, patch):
    return {"hidden_size": width, "num_heads": heads, "mlp_dim": 2 * width, "num_layers": 2,
            "patches": {"size": list(patch)}}


def tiny_mm_config(records: Path) -> ml_collections.ConfigDict:
    """The Epic M&M config (RGB + flow + audio, Scenic's recipe) shrunk: 8 frames of 32x32, 32x16 log-mel.

    The views have the sizes of the embedded 'camera-motion' MTV (widths 48 and 32), so every stream can
    start from it: init_from names that zoo model.
    """
    c = load_config("epic_mm_b2_rgb_flow_audio")
    d = c.dataset_configs
    d.base_dir = str(records)
    d.tables = {"train": "train-*.tfrecord", "validation": "", "test": "train-*.tfrecord"}  # held-out: see below
    d.examples_per_subset = {"train": 4, "validation": 4, "test": 4}
    d.num_frames, d.min_resize, d.crop_size, d.num_test_clips = 8, 32, 32, 2
    d.flow.num_frames = 8
    d.audio.num_frames, d.audio.num_mel_bins = 32, 16
    d.augmentation_params.do_rand_augment = False
    m = c.model
    m.view_configs = [_view(48, 3, (16, 16, 4)), _view(32, 2, (16, 16, 2))]
    m.modalities = {"rgb": {"channels": 3}, "flow": {"view_configs": [_view(32, 2, (16, 16, 4))], "channels": 2},
                    "audio": {"view_configs": [_view(48, 3, (16, 16))], "channels": 1, "num_frames": 32,
                              "mel_bins": 16}}
    m.cross_view_fusion.fusion_layers = (1,)
    m.stochastic_depth = 0.0  # see the module docstring
    m.global_encoder_config = {"num_heads": 4, "mlp_dim": 64, "num_layers": 1, "hidden_size": 40,
                               "merge_axis": "channel"}
    c.batch_size, c.num_training_steps, c.num_training_epochs = 2, 4, None
    c.lr_configs.warmup_steps, c.lr_configs.steps_per_cycle, c.lr_configs.base_learning_rate = 1, 4, 0.05
    c.checkpoint_steps, c.log_eval_steps = 2, 4
    c.mixup = {"alpha": 0.3}
    c.modality_dropout = {"flow": 0.5, "audio": 0.5}
    c.init_from.checkpoint_path = "camera-motion"  # a zoo name (embedded in the package: offline)
    return c


@pytest.fixture(scope="module")
def records(tmp_path_factory, videos_dir) -> Path:
    """Four Epic-style segments of the two real clips with audio: RGB, Farneback flow and the audio track."""
    from mtv.data import prepare

    out = tmp_path_factory.mktemp("mm_records")
    csv_path = out / "segments.csv"
    lines = ["narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame,"
             "verb_class,noun_class"]
    for nid, video, start, stop, verb, noun in SEGMENTS:
        lines.append(f"{nid},P01,{video},00:00:{(start - 1) / 30:05.2f},00:00:{stop / 30:05.2f},{start},{stop},"
                     f"{verb},{noun}")
    csv_path.write_text("\n".join(lines) + "\n")
    result = prepare.prepare(csv_path, out, name="train", video_root=videos_dir, with_audio=True, with_flow=True,
                             min_resize=32, progress=False)
    assert result.num_written == 4 and not result.skipped
    return out


# ------------------------------------------------------------------------------- data, no training
def test_modality_dropout_rates_and_no_example_loses_every_stream():
    ones = {m: tf.ones([20000, 3]) for m in ("rgb", "flow", "audio")}
    # Each stream with 0.5: all three drawn dropped (1/8) gives one back, uniformly: P(drop) = 1/2 - 1/24.
    out, dropped = mixing.drop_modalities(ones, {"rgb": 0.5, "flow": 0.5, "audio": 0.5}, seed=[3, 4])
    dropped = dropped.numpy()
    assert not dropped.all(axis=1).any()
    np.testing.assert_allclose(dropped.mean(axis=0), 0.5 - 1 / 24, atol=0.015)
    assert dropped.any(axis=1).mean() == pytest.approx(1 - 1 / 8, abs=0.015)
    for i, m in enumerate(ones):  # a dropped stream is exactly the missing input, the others untouched
        np.testing.assert_array_equal(out[m].numpy()[dropped[:, i]], missing_input((dropped[:, i].sum(), 3)))
        assert (out[m].numpy()[~dropped[:, i]] == 1).all()
    # Only flow and audio listed: RGB is never dropped, the two are independent.
    _, dropped = mixing.drop_modalities(ones, {"flow": 0.25, "audio": 0.4}, seed=[5, 6])
    dropped = dropped.numpy()
    assert not dropped[:, 0].any()
    np.testing.assert_allclose(dropped[:, 1:].mean(axis=0), [0.25, 0.4], atol=0.015)
    assert (dropped[:, 1] & dropped[:, 2]).mean() == pytest.approx(0.1, abs=0.01)


def test_modality_dropout_is_a_function_of_the_step_so_a_resumed_stream_is_the_same():
    batch = ({"rgb": tf.ones([16, 2]), "audio": tf.ones([16, 2])}, tf.ones([16, 1]))
    ds = tf.data.Dataset.from_tensors(batch).repeat()

    def masks(start, count):
        out = mixing.modality_dropout_batches(ds, {"audio": 0.5}, seed=7, start_step=start).take(count)
        return [x["audio"].numpy()[:, 0] for x, _ in out]

    full, resumed = masks(0, 5), masks(3, 2)
    np.testing.assert_array_equal(np.stack(full[3:]), np.stack(resumed))
    assert len({m.tobytes() for m in full}) == 5  # a new draw every step


@pytest.mark.parametrize(("value", "message"), [
    ({"depth": 0.5}, "'depth', which is not a stream"), ({"audio": 1.5}, "probability in"),
    ("audio", "must map streams")])
def test_bad_modality_dropout_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=message):
        mixing.check_modality_dropout(value, ["rgb", "audio"])
    with pytest.raises(ConfigError, match="one stream"):
        mixing.check_modality_dropout({"rgb": 0.5}, ["rgb"])


def test_mixup_mixes_every_stream_with_the_batch_lambda():
    rng = np.random.default_rng(0)
    x = {"rgb": rng.normal(size=(4, 2, 3)).astype("float32"), "audio": rng.normal(size=(4, 5)).astype("float32")}
    y = {"verb": np.eye(4, dtype="float32"), "noun": np.eye(4, dtype="float32")[::-1].copy()}
    ds = mixing.mixup_batches(tf.data.Dataset.from_tensors((x, y)).repeat(), 0.4, seed=1, start_step=0)
    lams = []
    for mx, my in ds.take(2):
        lam = float(my["verb"][0, 0])
        lams.append(lam)
        for name, value in x.items():
            np.testing.assert_allclose(mx[name].numpy(), lam * value + (1 - lam) * value[::-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(my["noun"].numpy(), lam * y["noun"] + (1 - lam) * y["noun"][::-1], rtol=1e-5)
    assert lams[0] != lams[1]


def test_eval_views_read_flow_and_audio_of_the_same_clips_as_the_rgb(records):
    dc = {"num_frames": 8, "stride": 2, "min_resize": 32, "crop_size": 32, "num_test_clips": 2,
          "do_three_spatial_crops": True, "flow": {"num_frames": 8}, "audio": {"num_frames": 32, "num_mel_bins": 16}}
    files = sorted(str(p) for p in records.glob("train-*.tfrecord"))
    ds = tfrecord.make_dataset(files, dataset_configs=dc, is_train=False, batch_size=1, label_names=(),
                               modalities=("rgb", "flow", "audio"), with_ids=True)
    x, ids = next(iter(ds))
    example = tfrecord.parse_example(next(iter(tf.data.TFRecordDataset(files[0]))).numpy())
    assert ids.numpy()[0].decode() == example.id
    cfg = data_config(dc)
    audio_cfg = audio_lib.AudioConfig(num_mel_bins=16)
    clips = eval_clip_indices(len(example.frames), 8, 2, 2)
    assert (clips[0] != clips[1]).any()
    flow = flow_lib.resize_flow(flow_lib.dequantize(example.flow), *example.frames.shape[1:3])
    per_clip_flow = transforms.eval_transform(flow[np.minimum(clips, len(flow) - 1)], cfg, is_flow=True)
    np.testing.assert_allclose(x["flow"].numpy()[0], per_clip_flow, atol=1e-5)  # view c*3+k: clip c, crop k
    rgb = transforms.eval_transform(example.frames[clips], cfg)
    np.testing.assert_allclose(x["rgb"].numpy()[0], rgb, atol=1e-5)
    for view in range(6):
        wave = audio_lib.clip_waveform(example.audio, example.sample_rate, example.fps, clips[view // 3], audio_cfg,
                                       32)
        np.testing.assert_allclose(x["audio"].numpy()[0, view, ..., 0],
                                   audio_lib.log_mel_spectrogram(wave, audio_cfg).numpy(), atol=1e-4)
    assert not np.allclose(x["audio"].numpy()[0, 0], x["audio"].numpy()[0, 3])  # the two clips' audio differ


def test_array_data_with_a_dict_of_streams_and_a_clear_error_for_a_bare_clip(tmp_path, records):
    config = tiny_mm_config(records)
    rng = np.random.default_rng(0)
    streams = {"rgb": rng.integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8),
               "flow": rng.uniform(-1, 1, (3, 8, 32, 32, 2)).astype("float32"),
               "audio": rng.normal(size=(3, 32, 16, 1)).astype("float32")}
    labels = {"noun": np.array([1, 2, 3]), "verb": np.array([0, 1, 2])}
    shapes = {"rgb": (8, 32, 32, 3), "flow": (8, 32, 32, 2), "audio": (32, 16, 1)}
    data = build_datasets(config, tmp_path, train_data=(streams, labels), eval_data=(streams, labels))
    x, y = next(iter(data.train_dataset(2, seed=0, inputs=shapes, modality_dropout={"audio": 0.5})))
    assert {k: tuple(v.shape) for k, v in x.items()} == {k: (2, *s) for k, v in shapes.items() for s in [v]}
    assert set(y) == {"noun", "verb"}
    x, _ = next(data.parts[0][0].eval_batches(2))
    np.testing.assert_allclose(x["rgb"], streams["rgb"][:2] / 127.5 - 1, atol=1e-6)
    bare = build_datasets(config, tmp_path, train_data=(streams["rgb"], labels))
    with pytest.raises(DataError, match=r"one video tensor, but the model takes the streams \['rgb', 'flow'"):
        bare.train_dataset(2, seed=0, inputs=shapes)


# ------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def mm_run(tmp_path_factory, records):
    """A 4-step M&M run, and (started first, in a subprocess) the same run on 2 replicas that also measures
    held-out accuracy."""
    root = tmp_path_factory.mktemp("mm_run")
    config = tiny_mm_config(records)
    config_file = root / "tiny_mm.json"
    with_held_out = ml_collections.ConfigDict(config.to_dict())
    with_held_out.dataset_configs.tables.validation = "train-*.tfrecord"
    config_file.write_text(with_held_out.to_json())
    mirrored = subprocess.Popen(
        [sys.executable, "-m", "mtv.cli", "train", f"--config={config_file}", f"--workdir={root / 'mirrored'}",
         "--verbose=0", "--cpu_replicas=2", "--config.mixup.alpha=0"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True)
    try:
        result = train(config, root / "a")
        yield config, result, root, mirrored
    finally:
        mirrored.kill()


def _history(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_mm_trains_with_the_recipe_from_a_zoo_mtv_and_resumes_exactly(mm_run, caplog):
    config, result, root, _ = mm_run
    assert result.step == 4 and result.model.modalities == ["rgb", "flow", "audio"]
    assert [s for s, _ in ckpt_lib.list_checkpoints(result.workdir)] == [2, 4]
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and np.isfinite(losses).all()
    assert result.model.spec["class_splits"] == [300, 97]
    # A run killed after its step-2 checkpoint: a workdir holding that checkpoint and the config.
    resumed_dir = root / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(result.workdir / "config.json", resumed_dir / "config.json")
    shutil.copy(ckpt_lib.list_checkpoints(result.workdir)[0][1], resumed_dir / "checkpoints")
    resumed = train(config, resumed_dir)
    assert resumed.start_step == 2 and resumed.step == 4
    # The same batches, mixup lambdas and dropped streams as the uninterrupted run.
    np.testing.assert_allclose([h["loss"] for h in resumed.history], losses[2:], rtol=1e-5, atol=1e-6)
    ours, ref = (ckpt_lib.read_params(ckpt_lib.latest_checkpoint(d)) for d in (resumed_dir, result.workdir))
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_every_stream_starts_from_the_zoo_mtv(records):
    import mtv
    from mtv.models.builder import build_model
    from mtv.training.init_from import initialize
    from mtv.training.multimodal_init import zoom_linear

    config = tiny_mm_config(records)
    model = build_model(config, seed=0)
    how = initialize(model, config)
    assert "every stream initialised from MTV 'camera-motion'" in how
    source = {k: v.numpy() for k, v in mtv.load("camera-motion").flax_params().items()}
    ours = {k: v.numpy() for k, v in model.flax_params().items()}
    block = "MultiviewEncoder/encoderblock_0_view{}/MlpBlock_0/Dense_0/kernel"
    np.testing.assert_array_equal(ours[block.format(1)], source[block.format(1)])  # RGB view 1: its own
    np.testing.assert_array_equal(ours[block.format(2)], source[block.format(1)])  # flow (width 32) <- view 1
    np.testing.assert_array_equal(ours[block.format(3)], source[block.format(0)])  # audio (width 48) <- view 0
    # Flow: the source's 2-frame tubelet resized to the flow view's 4 frames, its RGB channels averaged.
    flow_kernel = zoom_linear(source["embedding_view1/kernel"], (4, 16, 16, 3, 32)).mean(axis=3, keepdims=True)
    np.testing.assert_allclose(ours["embedding_view2/kernel"], np.repeat(flow_kernel, 2, axis=3), rtol=1e-5,
                               atol=1e-7)


def test_mm_under_mirrored_strategy_follows_the_one_device_run(mm_run):
    """2 replicas x 1 example follow the one-device curve: each replica reads its own rows of the global batch,
    modality dropout is drawn per global batch, and gradients are summed over the replicas. Mixup is off in
    both runs: it pairs examples within each replica's batch (Scenic's per-device mixup; `mtv.data.mixing`)."""
    config, _, root, mirrored = mm_run
    out = mirrored.communicate(timeout=600)[0]
    assert mirrored.returncode == 0, out[-4000:]
    assert "step 4/4" in out and "held-out verb_accuracy" in out  # single-view held-out data of every stream
    plain = ml_collections.ConfigDict(config.to_dict())
    plain.mixup = {"alpha": 0.0}
    result = train(plain, root / "one_device_without_mixup")
    losses = [h["loss"] for h in _history(root / "mirrored")]
    np.testing.assert_allclose(losses, [h["loss"] for h in result.history], rtol=1e-4, atol=1e-5)
    ours, ref = (ckpt_lib.read_params(ckpt_lib.latest_checkpoint(d)) for d in (root / "mirrored", result.workdir))
    for key in ("output_projection/kernel", "embedding_view2/kernel", "embedding_view3/kernel"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-3, atol=1e-5, err_msg=key)


def test_stochastic_depth_masks_resume_with_the_checkpoint(tmp_path):
    """Checkpoints hold the random-number states, so a resumed run draws the masks an uninterrupted one would."""
    from mtv.models.builder import build_model
    from tests.test_multimodal import inputs_for, randomize, tiny_config

    config = tiny_config()
    config["model"]["stochastic_depth"] = 0.5
    model = build_model(config, seed=0)
    randomize(model)
    x = inputs_for(model)
    model(x, training=True)  # advance the states past their start
    ckpt_lib.save_checkpoint(tmp_path, 1, model)
    expected = [np.asarray(model(x, training=True)["verb"]) for _ in range(2)]
    assert not np.allclose(*expected)  # the masks change from call to call
    other = build_model(config, seed=0)
    ckpt_lib.restore_checkpoint(ckpt_lib.latest_checkpoint(tmp_path), other)
    for want in expected:
        np.testing.assert_allclose(np.asarray(other(x, training=True)["verb"]), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_writes_the_epic_results_file_and_scores_a_missing_stream(mm_run, tmp_path, capsys):
    from mtv.epic.results import read_results
    from mtv.eval.evaluate import load_for_eval

    config, result, root, _ = mm_run
    data = str(Path(config.dataset_configs.base_dir) / "train-*.tfrecord")
    full, no_audio = tmp_path / "mm.npz", tmp_path / "mm_no_audio.npz"
    assert run(["evaluate", f"--checkpoint={result.workdir}", f"--data={data}", f"--out={full}"]) == 0
    assert "4 videos x 2 views" in capsys.readouterr().out  # the run's num_test_clips=2
    assert run(["evaluate", f"--checkpoint={result.workdir}", f"--data={data}", f"--out={no_audio}",
                "--missing_modality=audio"]) == 0
    back, missing = read_results(full), read_results(no_audio)
    assert sorted(back.ids) == [s[0] for s in SEGMENTS]  # keyed by narration_id (prepare shuffles rows)
    assert back.outputs["verb"].shape == (4, 97) and back.outputs["noun"].shape == (4, 300)
    assert list(np.load(full)["narration_id"]) == list(back.ids)  # what the official Epic tools read
    # By hand: every view of every stream through the model, logits averaged over the 2 views.
    model = load_for_eval(checkpoint=result.workdir)
    dc = {**config.dataset_configs.to_dict(), "num_test_clips": 2}
    ds = tfrecord.make_dataset(data, dataset_configs=dc, is_train=False, batch_size=4, label_names=(),
                               modalities=("rgb", "flow", "audio"))
    views = {m: v.numpy() for m, v in next(iter(ds)).items()}
    for scores, audio in ((back, views["audio"]), (missing, missing_input(views["audio"].shape))):
        out = model({**{m: v.reshape(8, *v.shape[2:]) for m, v in views.items()},
                     "audio": audio.reshape(8, *audio.shape[2:])})
        for head in ("verb", "noun"):
            expected = np.asarray(out[head]).reshape(4, 2, -1).mean(axis=1)
            np.testing.assert_allclose(scores.outputs[head], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(back.outputs["verb"], missing.outputs["verb"])


def test_evaluate_refuses_an_unknown_or_every_missing_stream(mm_run):
    from mtv.eval.evaluate import check_missing

    model = mm_run[1].model
    with pytest.raises(ConfigError, match="'depth' is not a stream of this model"):
        check_missing(model, ["depth"])
    with pytest.raises(ConfigError, match="keep at least one"):
        check_missing(model, ["rgb", "flow", "audio"])
