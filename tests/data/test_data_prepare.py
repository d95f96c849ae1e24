"""`mtv data prepare`: both CSV layouts end to end through the CLI, and every bad-input error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import mtv.cli
from mtv.data.prepare import EPIC_NUM_CLASSES, read_rows
from mtv.data.tfrecord import parse_example, resolve_files
from tests.data.synthetic import level_frames, write_frames_dir, write_video


def _parse_all(pattern) -> dict:
    out = {}
    for path in resolve_files(pattern):
        for record in tf.data.TFRecordDataset(path):
            example = parse_example(record.numpy())
            out[example.id] = example
    return out


def test_generic_csv_end_to_end(tmp_path, videos_dir, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "path,label,label_name\n"
        "arm_wrestling__mmaction2_demo.mp4,6,arm wrestling\n"
        "eye_makeup_audio__mmaction2_test.avi,3,applying eye makeup\n"
        "gone.mp4,1,missing video\n")
    out = tmp_path / "records"
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--shards", "2",
                        "--video_root", str(videos_dir), "--num_classes", "400", "--max_frames", "12",
                        "--min_resize", "128", "--audio"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 2 examples to 2 shard(s)" in captured.out
    assert "skipped 1 unreadable video(s)" in captured.out and "gone.mp4" in captured.out
    examples = _parse_all(out / "train@2")
    assert sorted(examples) == ["arm_wrestling__mmaction2_demo", "eye_makeup_audio__mmaction2_test"]
    arm = examples["arm_wrestling__mmaction2_demo"]
    assert arm.frames.shape == (12, 128, 170, 3) and arm.labels == {"label": [6]}
    assert arm.label_strings == {"label": ["arm wrestling"]} and arm.audio is None
    makeup = examples["eye_makeup_audio__mmaction2_test"]
    assert makeup.fps == pytest.approx(25.0) and makeup.sample_rate == 16000
    assert makeup.audio.shape == (round(12 / 25 * 16000),)
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["num_examples"] == 2 and len(summary["skipped"]) == 1


def test_epic_csv_with_video_file_and_frames_dir(tmp_path):
    root = tmp_path / "epic"
    write_frames_dir(root / "P01" / "rgb_frames" / "P01_11", level_frames(range(10, 210, 10)))  # 20 frames
    for name, value in (("u", 150), ("v", 100)):  # precomputed flow at half the RGB rate: 10 frames
        flow_dir = root / "P01" / "flow_frames" / "P01_11" / name
        write_frames_dir(flow_dir, level_frames([value] * 10))
    write_video(root / "P02_03.mp4", level_frames(range(20, 240, 20)), fps=10)  # 11 frames
    csv_path = tmp_path / "EPIC_100_validation.csv"
    csv_path.write_text(
        "narration_id,participant_id,video_id,start_frame,stop_frame,verb,verb_class,noun,noun_class\n"
        "P01_11_0,P01,P01_11,3,7,take,0,plate,2\n"
        "P02_03_5,P02,P02_03,2,10,put,1,cup,299\n"
        "P03_01_0,P03,P03_01,1,5,open,2,door,8\n")
    out = tmp_path / "records"
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--video_root", str(root),
                        "--name", "val", "--flow"])
    assert code == 0
    examples = _parse_all(out / "val@1")
    assert sorted(examples) == ["P01_11_0", "P02_03_5"]
    frames_dir = examples["P01_11_0"]
    # Frames 3..7 (1-based, inclusive) of the frame directory: levels 30..70.
    np.testing.assert_allclose(frames_dir.frames.mean(axis=(1, 2, 3)), [30, 40, 50, 60, 70], atol=2)
    assert frames_dir.labels == {"verb": [0], "noun": [2]}
    assert frames_dir.label_strings == {"verb": ["take"], "noun": ["plate"]}
    assert frames_dir.media_id == "P01_11" and frames_dir.flow.shape == (4, 32, 48, 2)
    np.testing.assert_allclose(frames_dir.flow.reshape(-1, 2).mean(0), [150, 100], atol=2)  # read, not computed
    video_file = examples["P02_03_5"]
    np.testing.assert_allclose(video_file.frames.mean(axis=(1, 2, 3)), range(40, 220, 20), atol=3)
    assert video_file.labels == {"verb": [1], "noun": [299]}
    assert video_file.flow.shape == (8, 32, 48, 2)  # Farneback between the 9 frames
    assert np.abs(video_file.flow.astype(int) - 128).max() <= 3  # flat frames: no motion


def test_real_epic_validation_csv_validates(epic_dir):
    rows, layout = read_rows(epic_dir / "EPIC_100_validation.csv")
    assert layout == "epic" and len(rows) == 9668
    assert rows[0].id == "P01_11_0" and rows[0].frame_range == (0, 113)
    assert all(0 <= r.labels["verb"][0] < EPIC_NUM_CLASSES["verb"] for r in rows)
    test_rows, _ = read_rows(epic_dir / "EPIC_100_test_timestamps.csv")
    assert len(test_rows) == 13092 and test_rows[0].labels == {}


def _run_bad(tmp_path, capsys, text: str, *extra: str) -> str:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(text)
    out = tmp_path / "never"
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), *extra])
    assert code == 1
    assert not out.exists()  # the error came before any work
    return capsys.readouterr().err


def test_empty_csv(tmp_path, capsys):
    assert "is empty" in _run_bad(tmp_path, capsys, "")
    assert "is empty" in _run_bad(tmp_path, capsys, "path,label\n")


def test_missing_column_is_named_with_the_expected_ones(tmp_path, capsys):
    err = _run_bad(tmp_path, capsys, "path,class\na.mp4,1\n")
    assert "no column 'label'" in err and "path,label" in err and "verb_class" in err
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,stop_frame\nx,P01_01,4\n")
    assert "no column 'start_frame'" in err
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,start_frame,stop_frame,verb_class\nx,P01_01,1,4,3\n")
    assert "no column 'noun_class'" in err


def test_non_integer_label(tmp_path, capsys):
    err = _run_bad(tmp_path, capsys, "path,label\na.mp4,1\nb.mp4,dog\n")
    assert "bad.csv:3" in err and "'label' must be an integer" in err and "'dog'" in err


def test_label_outside_num_classes(tmp_path, capsys):
    err = _run_bad(tmp_path, capsys, "path,label\na.mp4,1\nb.mp4,10\n", "--num_classes", "10")
    assert "bad.csv:3" in err and "label 10 is outside [0, 10)" in err
    err = _run_bad(tmp_path, capsys, "path,label\na.mp4,-1\n")
    assert "bad.csv:2: label -1 is negative" in err
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
                                     "x,P01_01,1,4,97,3\n")
    assert "verb_class 97 is outside [0, 97)" in err


def test_bad_epic_frame_range(tmp_path, capsys):
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
                                     "x,P01_01,9,4,1,3\n")
    assert "start_frame 9 and stop_frame 4" in err


def test_all_videos_unreadable_is_an_error(tmp_path, capsys):
    csv_path = tmp_path / "gone.csv"
    csv_path.write_text("path,label\nmissing.mp4,0\n")
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(tmp_path / "out")])
    assert code == 1 and "none of the 1 videos" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert mtv.cli.run(["data"]) == 2
    assert mtv.cli.run(["data", "convert", "x.csv", "--out", str(tmp_path)]) == 2
    assert "only subcommand is 'prepare'" in capsys.readouterr().err
    assert mtv.cli.run(["data", "prepare", "x.csv"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert mtv.cli.run(["data", "prepare", "--out", str(tmp_path)]) == 2
    assert mtv.cli.run(["data", "prepare", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
