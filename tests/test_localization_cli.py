"""Temporal localization end to end: `mtv train` (subprocess) and resume, `mtv evaluate`, `mtv localize`, the
annotation readers (CSV and Epic-style), the sliding-window baseline and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtv.cli import run
from mtv.data.untrimmed import Segment, UntrimmedVideo, untrimmed_set, write_untrimmed, write_video_file
from mtv.errors import ConfigError, DataError
from mtv.eval.localization_metrics import mean_average_precision
from mtv.long.baseline import merge_windows
from mtv.long.datasets import clip_segments, read_segment_csv

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "localization" / "camera_motion_localization_tiny.py"
TINY = ["--config.num_training_steps=4", "--config.checkpoint_steps=2", "--config.batch_size=2",
        "--config.dataset_configs.synthetic.untrimmed.num_train_videos=2",
        "--config.dataset_configs.synthetic.untrimmed.num_eval_videos=1",
        "--config.dataset_configs.synthetic.untrimmed.video_seconds=8",
        "--config.model.localization.windows_per_sequence=4"]


def _train(workdir: Path, videos_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mtv.cli", "train", f"--config={CONFIG}", f"--workdir={workdir}",
           f"--videos={videos_dir}", *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def _losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, videos_dir):
    """A 4-step localizer run, then the same command again after its last checkpoint is removed."""
    workdir = tmp_path_factory.mktemp("loc") / "run"
    first = _train(workdir, videos_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    losses = _losses(workdir)
    (workdir / "checkpoints" / "ckpt_00000004.npz").unlink()
    second = _train(workdir, videos_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    return workdir, first.stdout, second.stdout, losses


def test_train_writes_a_run_and_resumes_it_exactly(trained):
    workdir, first, second, losses = trained
    assert "step 4/4 (started at 0)" in first and "held-out mAP@0.5:" in first
    assert "step 4/4 (started at 2)" in second
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
    resumed = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-3:]
    # Steps 3 and 4 again, from the step-2 checkpoint and the same (seed, step) batches: the same losses.
    assert [r["step"] for r in resumed[:2]] == [3, 4]
    np.testing.assert_allclose([r["loss"] for r in resumed[:2]], [losses[3], losses[4]], rtol=1e-5)
    assert "eval" in resumed[2] and set(resumed[2]["eval"]) == {"mAP@0.3", "mAP@0.5", "mAP@0.7", "mAP"}
    info = json.loads((workdir / "localizer.json").read_text())
    assert info["fps"] == 8.0 and info["window_frames"] == 8 and len(info["class_names"]) == 13


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, videos_dir):
    """Two held-out untrimmed videos on disk with their annotation CSV."""
    directory = tmp_path_factory.mktemp("untrimmed")
    videos = untrimmed_set(videos_dir, count=2, split="heldout", seconds=6.0, fps=8.0, size=32, seed=5,
                           min_segment_seconds=2.0, max_segment_seconds=3.0, source_min_resize=64)
    return write_untrimmed(videos, directory), videos


def test_evaluate_reports_map_on_held_out_and_on_a_csv(trained, annotated, tmp_path, capsys):
    workdir = trained[0]
    assert run(["evaluate", f"--checkpoint={workdir}"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["step"] == 4 and held["videos"] == 1
    for key in ("mAP@0.3", "mAP@0.5", "mAP@0.7", "mAP"):
        assert 0.0 <= held[key] <= 1.0
    assert held["mAP"] == pytest.approx(np.mean([held["mAP@0.3"], held["mAP@0.5"], held["mAP@0.7"]]))
    csv_path, videos = annotated
    out = tmp_path / "eval.json"
    assert run(["evaluate", f"--checkpoint={workdir}", f"--data={csv_path}", f"--out={out}"]) == 0
    on_csv = json.loads(capsys.readouterr().out)
    assert on_csv["videos"] == 2 and json.loads(out.read_text()) == on_csv
    assert set(on_csv["per_class"]) == {s.label for v in videos for s in v.segments}


def test_localize_prints_segments_and_writes_json_and_png(trained, annotated, tmp_path, capsys):
    csv_path, videos = annotated
    video = csv_path.parent / f"{videos[0].name}.avi"
    prefix = tmp_path / "out" / "seg"
    assert run(["localize", str(video), f"--model={trained[0]}", f"--out={prefix}", "--top=5"]) == 0
    printed = capsys.readouterr().out
    assert "6 windows of 1 s" in printed and "start" in printed
    doc = json.loads(Path(f"{prefix}.json").read_text())
    assert doc["windows"] == 6 and doc["duration"] == pytest.approx(6.0) and 0 < len(doc["segments"]) <= 5
    for row in doc["segments"]:
        assert 0.0 <= row["start"] < row["end"] <= 6.0 and 0.0 < row["score"] <= 1.0
        assert f"{row['start']:8.2f} {row['end']:8.2f}  {row['label']:<20}" in printed
    assert Path(f"{prefix}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_video_shorter_than_one_window_is_a_named_error_and_nothing_is_written(trained, tmp_path, capsys):
    short = write_video_file(tmp_path / "short.avi", np.zeros((5, 32, 32, 3), np.uint8), 8.0)
    prefix = tmp_path / "seg"
    assert run(["localize", str(short), f"--model={trained[0]}", f"--out={prefix}"]) == 1
    err = capsys.readouterr().err
    assert "shorter than one window" in err and "short.avi" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.avi"]
    assert run(["localize", str(tmp_path / "missing.avi"), f"--model={trained[0]}", f"--out={prefix}"]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("row, message", [
    ("v.avi,1.0,9.0,static", "lies outside the video"),
    ("v.avi,2.0,2.0,static", "start 2 s >= end 2 s"),
    ("v.avi,0.0,1.0,dolly_zoom", "unknown label 'dolly_zoom'"),
])
def test_bad_annotations_are_named_errors_and_evaluate_writes_nothing(trained, tmp_path, capsys, row, message):
    write_video_file(tmp_path / "v.avi", np.zeros((48, 32, 32, 3), np.uint8), 8.0)  # 6 s
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(f"video,start,end,label\nv.avi,0.0,1.0,static\n{row}\n")
    with pytest.raises(DataError, match=message) as err:
        read_segment_csv(csv_path, class_names=("static", "pan_left_slow"))
    assert "bad.csv:3" in str(err.value)
    out = tmp_path / "eval.json"
    assert run(["evaluate", f"--checkpoint={trained[0]}", f"--data={csv_path}", f"--out={out}"]) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_epic_style_rows_give_the_same_segments(tmp_path):
    write_video_file(tmp_path / "P01_01.mp4", np.zeros((80, 32, 32, 3), np.uint8), 8.0)  # 10 s
    epic = tmp_path / "epic.csv"
    epic.write_text("narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb,verb_class\n"
                    "P01_01_0,P01,P01_01,00:00:00.50,00:00:02.25,open,3\n"
                    "P01_01_1,P01,P01_01,00:00:04.00,00:00:09.00,take,0\n")
    segments, names = read_segment_csv(epic, label_column="verb_class")
    assert names == ["0", "3"]
    assert segments == {"P01_01.mp4": [Segment(0.5, 2.25, "3"), Segment(4.0, 9.0, "0")]}
    epic.write_text(epic.read_text().replace("00:00:09.00", "00:00:11.00"))
    with pytest.raises(DataError, match=r"epic.csv:3 .*outside the video"):
        read_segment_csv(epic, label_column="verb_class")
    epic.write_text(epic.read_text().replace("00:00:11.00", "soon"))
    with pytest.raises(DataError, match="stop_timestamp' must be a time"):
        read_segment_csv(epic, label_column="verb_class")


def test_window_merging_by_hand():
    # Windows of 1 s: a, a, b, b, b, a -> [0, 2) a (mean 0.7, 0.9), [2, 5) b, [5, 6) a.
    p = np.asarray([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0], [0.5, 0.5]])
    got = merge_windows(p, 1.0, ["a", "b"])
    assert [(s, e, c) for s, e, c, _ in got] == [(0.0, 2.0, "a"), (2.0, 5.0, "b"), (5.0, 6.0, "a")]
    np.testing.assert_allclose([x[3] for x in got], [0.8, 0.8, 0.5])
    truth = {"v": [(0.0, 2.0, "a"), (2.0, 5.0, "b"), (5.0, 6.0, "a")]}
    assert mean_average_precision(truth, {"v": got})["mAP"] == 1.0
    # A window on a boundary shifts the merged segment: [0, 3) vs the truth [0, 2.5): tIoU 2.5/3 < 0.9.
    assert mean_average_precision({"v": [(0.0, 2.5, "a")]}, {"v": got[:1]}, thresholds=[0.9])["mAP"] == 0.0


def test_sequence_targets_clip_segments_to_the_sequence():
    video = UntrimmedVideo("v", np.zeros((64, 4, 4, 3), np.uint8), 8.0,
                           [Segment(0.0, 3.0, "a"), Segment(3.0, 8.0, "b")])
    assert clip_segments(video.segments, 2.0, 6.0) == [(0.0, 1.0, "a"), (1.0, 4.0, "b")]
    assert clip_segments(video.segments, 3.0, 5.0) == [(0.0, 2.0, "b")]


def test_the_csv_dataset_reads_annotated_videos_for_training(annotated, tmp_path):
    from mtv.data.datasets import DatasetRequest, get_dataset

    csv_path, videos = annotated
    dc = {"crop_size": 32, "untrimmed_csv": {"train": str(csv_path), "eval": str(csv_path), "fps": 8.0}}
    entry = get_dataset("untrimmed_csv")
    request = DatasetRequest("data", "untrimmed_csv", dc, {}, tmp_path)
    labels = sorted({s.label for v in videos for s in v.segments})
    assert entry.classes(request) == {"label": len(labels)}
    data = entry.build(request).source
    assert data.class_names == labels and len(data.train) == len(data.heldout) == 2
    first = data.train[0]
    assert first.frames.shape == (48, 32, 32, 3) and first.fps == 8.0 and first.segments == videos[0].segments
    with pytest.raises(ConfigError, match="untrimmed_csv.train"):
        entry.build(DatasetRequest("data", "untrimmed_csv", {"untrimmed_csv": {}}, {}, tmp_path))


def test_init_from_starts_the_localizer_backbone_and_the_baseline_from_the_pretrained_mtv(tmp_path):
    """configs/localization/camera_motion_localization_pretrained.py: both backbones start as the embedded MTV."""
    import mtv
    from mtv.data.synthetic import CLASSES
    from mtv.io.configs import load_config
    from mtv.long.baseline import train_window_classifier
    from mtv.long.datasets import UntrimmedData
    from mtv.long.train_localization import train_localizer

    embedded = REPO / "mtv" / "embedded" / "camera-motion"
    expected = {k: np.asarray(v) for k, v in mtv.load(str(embedded)).backbone.flax_params().items()}
    config = load_config(str(REPO / "configs" / "localization" / "camera_motion_localization_pretrained.py"))
    config.init_from.checkpoint_path = str(embedded)
    config.num_training_steps = config.checkpoint_steps = 1
    config.batch_size = 1
    config.lr_configs.base_learning_rate = 0.0  # one step that leaves the weights as initialised
    config.model.localization.windows_per_sequence = 1
    rng = np.random.default_rng(0)
    video = UntrimmedVideo("v", rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8), 8.0,
                           [Segment(0.0, 1.0, "static"), Segment(1.0, 2.0, "zoom_in_fast")])
    run = train_localizer(config, tmp_path / "run", data=UntrimmedData([video], [], list(CLASSES)))
    classifier = train_window_classifier(config, [video], CLASSES, steps=0, batch=1)
    for name, model in (("localizer", run.model.backbone), ("baseline", classifier.backbone)):
        got = model.flax_params()
        assert set(got) == set(expected), name
        for key, value in expected.items():
            np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=f"{name}: {key}")
    with pytest.raises(ConfigError, match="checkpoint_path is empty"):
        config.init_from.checkpoint_path = ""
        train_window_classifier(config, [video], CLASSES, steps=0, batch=1)


@pytest.mark.parametrize("strategy", ["mirrored", "config"])
def test_a_localizer_refuses_a_multi_replica_strategy_before_any_work(tmp_path, strategy):
    from mtv.io.configs import load_config
    from mtv.training.trainer import train

    config = load_config(str(CONFIG))
    if strategy == "config":
        config.strategy = "multi_worker"
    with pytest.raises(ConfigError, match="trains on one device; strategy (mirrored|multi_worker) is not supported"):
        train(config, tmp_path / "run", strategy="mirrored" if strategy == "mirrored" else None)
    assert not (tmp_path / "run").exists()
