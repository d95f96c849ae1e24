"""End-to-end training: it learns, it resumes after a kill, it co-finetunes, it rejects bad input early."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mtv.cli import run
from mtv.data import mixing, synthetic
from mtv.errors import ConfigError, DataError
from mtv.io.configs import load_config
from mtv.training import checkpoints as ckpt_lib
from mtv.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
CHANCE = 100.0 / len(synthetic.CLASSES)


def _steps(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, videos_dir):
    """The tiny two-view MTV trained with the recipe on camera-motion clips rendered from real videos."""
    config = load_config(str(TINY))
    config.dataset_configs.synthetic.videos = str(videos_dir)
    workdir = tmp_path_factory.mktemp("camera_motion_run")
    start = time.time()
    result = train(config, workdir)
    print(f"tiny MTV: {result.step} steps in {time.time() - start:.0f} s, held-out {result.eval}")
    return config, result


def test_tiny_mtv_learns_camera_motion_far_above_chance(trained):
    config, result = trained
    assert result.step == config.num_training_steps == 400
    # Held-out: clips rendered from a video never used in training ('flipping_pancake').
    assert result.eval["accuracy"] > 4 * CHANCE, result.eval
    steps = _steps(result.workdir)
    assert [s["step"] for s in steps] == list(range(1, 401))
    losses = np.array([s["loss"] for s in steps])
    assert losses[-50:].mean() < losses[:50].mean() - 0.5
    warm = config.lr_configs.warmup_steps
    assert steps[0]["learning_rate"] == 0.0 and steps[int(warm) // 2]["learning_rate"] == pytest.approx(
        config.lr_configs.base_learning_rate / 2, rel=1e-6)
    assert [s for s, _ in ckpt_lib.list_checkpoints(result.workdir)] == [200, 300, 400]
    assert list((result.workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_evaluate_command_on_the_trained_run(trained, tmp_path, capsys):
    from mtv.data.tfrecord import ClipExample, write_tfrecords
    from mtv.epic.results import read_results

    config, result = trained
    clips, labels = synthetic.camera_motion_eval(config.dataset_configs.synthetic.to_dict(), num_frames=8, size=32,
                                                 count=52, seed=99)
    write_tfrecords([ClipExample(id=f"clip{i}", frames=c, labels={"label": [int(y)]})
                     for i, (c, y) in enumerate(zip(clips, labels, strict=True))], tmp_path, name="heldout")
    out = tmp_path / "scores.npz"
    assert run(["evaluate", f"--checkpoint={result.workdir}", f"--data={tmp_path}", f"--out={out}"]) == 0
    text = capsys.readouterr().out
    assert "52 videos x 1 views" in text
    top1 = float(text.split("top1:")[1].split()[0])
    back = read_results(out)
    by_id = dict(zip(back.ids, back.outputs["logits"].argmax(1), strict=True))
    hits = np.mean([by_id[f"clip{i}"] == y for i, y in enumerate(labels)]) * 100
    assert top1 == pytest.approx(hits, abs=0.01) and top1 > 3 * CHANCE


def _cli(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtv.cli", "train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=0",
            "--config.num_training_steps=200", "--config.checkpoint_steps=10", "--config.batch_size=8",
            "--config.lr_configs.steps_per_cycle=200", "--config.lr_configs.warmup_steps=5",
            "--config.dataset_configs.synthetic.num_eval=26", *extra]


def test_a_killed_run_resumes_from_its_last_checkpoint_without_losing_steps(tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_cli(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not ckpt_lib.list_checkpoints(workdir):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = [s for s, _ in ckpt_lib.list_checkpoints(workdir)]
    assert saved and saved[-1] < 200
    resumed_at = saved[-1]
    logged_before = len(_steps(workdir))
    assert logged_before >= resumed_at  # steps after the checkpoint may have run; they are redone
    done = subprocess.run(_cli(workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"step 200/200 (started at {resumed_at})" in done.stdout
    steps = [s["step"] for s in _steps(workdir)]
    second = steps[logged_before:]
    assert second == list(range(resumed_at + 1, 201))  # every step after the checkpoint, once, in order
    assert set(steps) == set(range(1, 201))
    assert [s for s, _ in ckpt_lib.list_checkpoints(workdir)][-1] == 200
    # The same run without the kill, in this process: the resumed steps see the same data and weights.
    config = load_config(str(TINY))
    config.num_training_steps, config.checkpoint_steps, config.batch_size = 200, 10, 8
    config.lr_configs.steps_per_cycle, config.lr_configs.warmup_steps = 200, 5
    config.dataset_configs.synthetic.num_eval = 26
    reference = train(config, tmp_path / "reference")
    ref = {s["step"]: s["loss"] for s in reference.history}
    resumed = {s["step"]: s["loss"] for s in _steps(workdir)[logged_before:]}
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [ref[s] for s in sorted(resumed)],
                               rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------------------ bad input
def _tiny(**changes):
    config = load_config(str(TINY))
    config.num_training_steps, config.checkpoint_steps, config.batch_size = 2, 2, 2
    config.lr_configs.steps_per_cycle, config.lr_configs.warmup_steps = 2, 1
    for key, value in changes.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _csv_config(tmp_path: Path, csv_path: Path):
    return _tiny(dataset_name="video_csv", **{"dataset_configs.train_csv": str(csv_path),
                                              "dataset_configs.stride": 1})


def _clip_videos(tmp_path: Path, count: int) -> list[str]:
    textures = synthetic.texture_sources(2, seed=5)
    names = []
    for i in range(count):
        clip = synthetic.render_clip(textures[i % 2], int(i % 13), num_frames=12, size=40,
                                     rng=np.random.default_rng(i))
        synthetic.write_video(tmp_path / f"clip{i}.avi", clip)
        names.append(f"clip{i}.avi")
    return names


def test_unreadable_videos_are_skipped_counted_and_reported(tmp_path, capsys):
    names = _clip_videos(tmp_path, 3)
    (tmp_path / "broken.avi").write_bytes(b"\x00" * 100)
    rows = [[n, i] for i, n in enumerate(names)] + [["broken.avi", 1]]
    csv_path = _csv(tmp_path / "train.csv", ["path", "label"], rows)
    result = train(_csv_config(tmp_path, csv_path), tmp_path / "run")
    assert result.step == 2 and result.skipped == 1
    config_file = tmp_path / "csv_config.py"
    config_file.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tiny', {str(TINY)!r})\n"
        "tiny = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tiny)\n\n\n"
        "def get_config():\n    c = tiny.get_config()\n    c.dataset_name = 'video_csv'\n"
        f"    c.dataset_configs.train_csv = {str(csv_path)!r}\n    c.dataset_configs.stride = 1\n"
        "    c.num_training_steps = 2\n    c.checkpoint_steps = 2\n    c.batch_size = 2\n"
        "    c.lr_configs.steps_per_cycle = 2\n    c.lr_configs.warmup_steps = 1\n    return c\n")
    assert run(["train", f"--config={config_file}", f"--workdir={tmp_path / 'cli_run'}", "--verbose=0"]) == 0
    assert "1 unreadable example(s) were skipped" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["label", "empty", "column"])
def test_bad_csvs_fail_before_training(tmp_path, case):
    names = _clip_videos(tmp_path, 1) if case == "label" else ["clip0.avi"]
    if case == "label":
        csv_path = _csv(tmp_path / "train.csv", ["path", "label"], [[names[0], 13]])
        match = "outside"
    elif case == "empty":
        csv_path = tmp_path / "train.csv"
        csv_path.write_text("")
        match = "empty"
    else:
        csv_path = _csv(tmp_path / "train.csv", ["path", "class"], [[names[0], 1]])
        match = "no column 'label'"
    with pytest.raises(DataError, match=match):
        train(_csv_config(tmp_path, csv_path), tmp_path / "run")
    assert not ckpt_lib.list_checkpoints(tmp_path / "run")


def test_frames_the_views_cannot_divide_fail_before_any_data_is_read(tmp_path, capsys):
    config = _tiny(**{"dataset_configs.num_frames": 6})
    with pytest.raises(ConfigError, match="does not divide"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    args = ["train", f"--config={TINY}", f"--workdir={tmp_path / 'cli'}", "--config.dataset_configs.num_frames=6"]
    assert run(args) == 1
    assert "does not divide" in capsys.readouterr().err


def test_array_labels_outside_the_classes_are_rejected(tmp_path):
    clips = np.zeros((4, 8, 32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="outside"):
        train(_tiny(), tmp_path / "run", train_data=(clips, np.array([0, 1, 2, 13])))


# ------------------------------------------------------------------------------ other switches
def test_mixed_bfloat16_trains_with_float32_weights(tmp_path):
    import keras

    before = keras.mixed_precision.global_policy().name
    result = train(_tiny(mixed_precision="mixed_bfloat16", **{"dataset_configs.synthetic.num_eval": 13}),
                   tmp_path / "run")
    assert keras.mixed_precision.global_policy().name == before
    assert all(np.isfinite(s["loss"]) for s in result.history)
    assert result.model.compute_dtype == "bfloat16"
    assert {v.dtype for v in result.model.trainable_variables} == {"float32"}


def test_cofinetuning_trains_each_head_only_on_its_own_dataset(tmp_path):
    import ml_collections

    config = _tiny(**{"dataset_configs.synthetic.num_eval": 13})
    config.num_training_steps, config.checkpoint_steps, config.batch_size = 6, 6, 4
    config.lr_configs.steps_per_cycle = 6
    config.cofinetune = True
    config.datasets = [
        ml_collections.ConfigDict({"name": "motion", "dataset_name": "camera_motion", "num_classes": 13,
                                   "sampling_weight": 1.0}),
        ml_collections.ConfigDict({"name": "other", "dataset_name": "camera_motion", "num_classes": 13,
                                   "sampling_weight": 0.0,
                                   "dataset_configs": {"synthetic": {"textures": 3, "eval_seed": 7, "num_eval": 13}}}),
    ]
    result = train(config, tmp_path / "run")
    assert result.model.spec["split_names"] == ["motion", "other"]
    assert set(result.eval) == {"motion_accuracy", "motion_top5", "other_accuracy", "other_top5"}
    kernel = result.model.flax_params()["output_projection/kernel"].numpy()
    assert np.abs(kernel[:, :13]).max() > 0  # trained: the zero-initialised head moved
    assert np.abs(kernel[:, 13:]).max() == 0  # never sampled: its head got no gradient at all


def test_mixture_follows_the_sampling_weights_and_resumes_exactly():
    import tensorflow as tf

    def const(value):
        return tf.data.Dataset.from_tensors(tf.constant(value)).repeat()

    picks = [int(x) for x in mixing.mixture([const(0), const(1)], [3.0, 1.0], seed=4, start_step=0).take(800)]
    assert np.mean(np.array(picks) == 0) == pytest.approx(0.75, abs=0.05)
    tail = [int(x) for x in mixing.mixture([const(0), const(1)], [3.0, 1.0], seed=4, start_step=500).take(300)]
    assert tail == picks[500:]


def test_mixup_mixes_inputs_and_labels_with_one_lambda_per_batch():
    import tensorflow as tf

    x = np.arange(4 * 2, dtype=np.float32).reshape(4, 1, 1, 1, 2)
    y = np.eye(4, dtype=np.float32)
    ds = mixing.mixup_batches(tf.data.Dataset.from_tensors((x, {"label": y})).repeat(), 0.4, seed=1,
                              start_step=0)
    first, second = list(ds.take(2))
    for mx, my in (first, second):
        lam = float(my["label"][0, 0])
        np.testing.assert_allclose(mx.numpy(), lam * x + (1 - lam) * x[::-1], rtol=1e-5)
        np.testing.assert_allclose(my["label"].numpy(), lam * y + (1 - lam) * y[::-1], rtol=1e-5)
    assert float(first[1]["label"][0, 0]) != float(second[1]["label"][0, 0])
