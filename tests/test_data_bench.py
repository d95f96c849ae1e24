"""`mtv data bench` (the trainer's / evaluator's dataset timed on one core and all) and benchmarks/data.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from mtv.data.prepare import prepare, usable_cpus
from tests.data.synthetic import level_frames, write_video

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"  # 8 x 32 x 32 clips, 13 classes
RUN_FIELDS = {"cores", "clips", "seconds", "clips_per_s", "cpu_s", "clips_per_cpu_s", "peak_rss_mb", "skipped"}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _tiny_records(folder: Path) -> Path:
    """Four 20-frame 48 x 64 videos prepared into records, plus a shard holding one record that is no example."""
    folder.mkdir(parents=True)
    lines = ["path,label"]
    for i in range(4):
        write_video(folder / f"v{i}.mp4", level_frames([30 + 40 * i] * 20, 48, 64))
        lines.append(f"v{i}.mp4,{i}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    out = folder / "records"
    prepare(folder / "train.csv", out, num_classes=13, num_workers=1, progress=False)
    with tf.io.TFRecordWriter(str(out / "train-junk.tfrecord")) as writer:
        writer.write(b"not a SequenceExample")
    return out


def test_mtv_data_bench_prints_one_json_line_for_the_eval_split(tmp_path):
    records = _tiny_records(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "mtv.cli", "data", "bench", str(records), f"--config={TINY}", "--split=eval",
         "--batch_size=2", "--batches=3", "--warmup=1", "--config.dataset_configs.num_test_clips=2",
         "--config.dataset_configs.do_three_spatial_crops=True"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["split"] == "eval" and report["views"] == 6 and report["batch_size"] == 2
    assert report["cores"] == usable_cpus() and report["num_frames"] == 8 and report["crop_size"] == 32
    one, every = report["runs"]["one_core"], report["runs"]["all_cores"]
    assert set(one) == set(every) == RUN_FIELDS
    assert one["cores"] == 1 and every["cores"] == usable_cpus()
    assert one["clips"] == every["clips"] == 6  # 3 timed batches of 2 videos, the 4 records read again as needed
    assert report["clips_per_s"] == every["clips_per_s"] > 0 and report["one_core_clips_per_s"] == one["clips_per_s"]
    assert report["clips_per_s_per_core"] == pytest.approx(every["clips_per_s"] / usable_cpus(), rel=1e-2)
    assert report["views_per_s"] == pytest.approx(6 * every["clips_per_s"], rel=1e-2)
    assert report["speedup_all_vs_one_core"] == pytest.approx(every["clips_per_s"] / one["clips_per_s"], rel=1e-2)
    assert report["peak_rss_mb"] >= max(one["peak_rss_mb"], every["peak_rss_mb"]) > 100
    assert report["skipped"] >= 1  # the junk record, counted by the evaluator's reader


def test_mtv_data_bench_errors_are_named(tmp_path):
    from mtv.cli import run

    assert run(["data", "bench", str(tmp_path / "nothing")]) == 2  # no --config
    assert run(["data", "bench", str(tmp_path / "nothing"), f"--config={TINY}", "--batches=0"]) == 1


@pytest.mark.usefixtures("videos_dir")
def test_benchmark_script_reports_the_training_pipeline(capsys, videos_dir):
    from benchmarks import data as data_benchmark

    report = data_benchmark.main([
        "--videos", str(videos_dir), "--examples", "3", "--max-frames", "20", "--min-resize", "40",
        "--batch-size", "2", "--batches", "2", "--warmup", "1", "--splits", "train",
        "--override", "dataset_configs.num_frames=8", "--override", "dataset_configs.min_resize=40",
        "--override", "dataset_configs.crop_size=32"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    train = report["train"]
    assert report["examples"] == 3 and report["prepare_s"] > 0 and report["cpu"]
    assert train["split"] == "train" and train["batch_size"] == 2 and train["num_frames"] == 8
    assert train["runs"]["one_core"]["clips"] == 4 and train["clips_per_s"] > 0
    assert report["targets"]["train_clips_per_s_per_core"] == [train["clips_per_s_per_core"], 8.0]
    assert report["targets"]["speedup_1_to_2_cores"] == [train["speedup_all_vs_one_core"], 1.7]
