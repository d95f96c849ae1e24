"""`mtv data prepare`: both CSV layouts end to end through the CLI, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

import mtv.cli
from mtv.data import flow as flow_lib
from mtv.data.prepare import EPIC_NUM_CLASSES, parse_timestamp, prepare, read_rows
from mtv.data.tfrecord import parse_example, resolve_files
from mtv.data.video import read_video
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
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--num_shards", "2",
                        "--video_root", str(videos_dir), "--num_classes", "400", "--max_frames", "12",
                        "--min_resize", "128"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 2 examples to 2 shard(s)" in captured.out
    assert "skipped 1 unreadable video(s)" in captured.out and "gone.mp4" in captured.out
    examples = _parse_all(out / "train@2")
    assert sorted(examples) == ["arm_wrestling__mmaction2_demo", "eye_makeup_audio__mmaction2_test"]
    arm = examples["arm_wrestling__mmaction2_demo"]
    assert arm.frames.shape == (12, 128, 170, 3) and arm.labels == {"label": [6]}
    assert arm.label_strings == {"label": ["arm wrestling"]} and arm.audio is None
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["num_examples"] == 2 and len(summary["skipped"]) == 1
    assert summary["skipped_counts"] == {"video": 1, "audio": 0, "flow": 0}


def test_generic_csv_with_audio_skips_and_counts_a_video_without_sound(tmp_path, videos_dir, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\narm_wrestling__mmaction2_demo.mp4,6\neye_makeup_audio__mmaction2_test.avi,3\n")
    out = tmp_path / "records"
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--video_root", str(videos_dir),
                        "--max_frames", "12", "--min_resize", "64", "--audio"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 1 examples" in captured.out
    assert "skipped 1 segment(s) without their audio" in captured.out
    assert "arm_wrestling__mmaction2_demo.mp4' has no audio track" in captured.out
    makeup = _parse_all(out)["eye_makeup_audio__mmaction2_test"]
    assert makeup.fps == pytest.approx(25.0) and makeup.sample_rate == 16000
    assert makeup.audio.shape == (round(12 / 25 * 16000),)
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["skipped_counts"] == {"video": 0, "audio": 1, "flow": 0}
    assert summary["skipped"][0]["kind"] == "audio"


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
    examples = _parse_all(out)
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


def _write_epic_flow(folder: Path, numbers, height: int, width: int) -> None:
    """Fake Epic TV-L1 u/v JPEGs whose levels name the flow frame: u = 100 + n, v = 60 + n."""
    for channel, offset in (("u", 100), ("v", 60)):
        (folder / channel).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            cv2.imwrite(str(folder / channel / f"frame_{n:010d}.jpg"), np.full((height, width), offset + n, np.uint8))


def _audio_lag(stored: np.ndarray, track: np.ndarray, start: int, window: int = 64) -> tuple[int, float]:
    """The lag (samples) at which `stored` best matches `track[start:]`, and the correlation there."""
    inner = stored[400:-400]
    scores = {lag: np.corrcoef(inner, track[start + lag + 400:start + lag + 400 + inner.size])[0, 1]
              for lag in range(-window, window + 1)}
    best = max(scores, key=scores.get)
    return best, scores[best]


def _source_frames(stored: np.ndarray, full: np.ndarray) -> np.ndarray:
    """For each stored (shrunk, JPEG) frame, the index of the full-decode frame it is closest to."""
    height, width = stored.shape[1:3]
    small = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in full]).astype(np.float32)
    return np.array([np.abs(small - f.astype(np.float32)).mean(axis=(1, 2, 3)).argmin() for f in stored])


def test_epic_timestamps_store_the_segment_its_audio_and_its_flow(tmp_path, videos_dir, real_videos, capsys):
    makeup, pancake = "eye_makeup_audio__mmaction2_test", "flipping_pancake__decord"
    root = tmp_path / "epic"
    root.mkdir()
    for name in (f"{makeup}.avi", f"{pancake}.mkv"):
        (root / name).symlink_to(videos_dir / name)
    # Flow frames 1..40 at half the RGB rate (frames 1..80 at 25 fps: the first 3.2 s), at the stored size.
    _write_epic_flow(root / "eye" / "flow_frames" / makeup, range(1, 41), 64, 85)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    write_video(root / "short_audio.mp4", level_frames(range(10, 210, 10)), fps=10, audio=tone)  # 2 s, 1 s of sound
    csv_path = tmp_path / "EPIC_100_test_timestamps.csv"
    csv_path.write_text(
        "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
        f"seg_flow,P01,{makeup},00:00:02.00,00:00:03.00,4,5\n"
        f"seg_computed,P01,{pancake},00:00:03.00,00:00:04.00,6,7\n"
        f"seg_no_flow,P01,{makeup},00:00:05.00,00:00:06.00,0,0\n"
        "seg_short_audio,P01,short_audio,00:00:00.50,00:00:01.80,0,0\n"
        f"seg_past_end,P01,{makeup},00:00:09.00,00:00:10.00,0,0\n")
    out = tmp_path / "records"
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--video_root", str(root),
                        "--min_resize", "64", "--audio", "--flow", "--flow_stride", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 2 examples" in captured.out and "flow: 1 from epic, 1 from farneback" in captured.out
    examples = _parse_all(out)
    assert sorted(examples) == ["seg_computed", "seg_flow"]

    # 2.00-3.00 s at 25 fps: frames 50..74 of the full decode, and the audio of exactly that second.
    seg = examples["seg_flow"]
    assert seg.fps == 25.0 and seg.frames.shape == (25, 64, 85, 3) and seg.labels == {"verb": [4], "noun": [5]}
    full = real_videos[f"{makeup}.avi"]
    assert np.abs(_source_frames(seg.frames, full.frames) - np.arange(50, 75)).max() <= 1  # the clip repeats frames
    track = read_video(videos_dir / f"{makeup}.avi", max_frames=100, audio_sample_rate=16000).audio
    assert seg.sample_rate == 16000 and seg.audio.shape == (16000,)
    lag, corr = _audio_lag(seg.audio, track, 2 * 16000)
    assert abs(lag) <= 32 and corr > 0.95  # within 2 ms of 2.00 s, not the start of the file
    # RGB frames 51..75 (1-based) at stride 2 are flow frames 26..37: read, stretched over the 24 gaps.
    assert flow_lib.epic_flow_numbers(51, 75, 2) == (26, 37)
    expected_u = 100 + 26 + np.linspace(0, 11, 24).round()
    np.testing.assert_allclose(seg.flow[..., 0].mean(axis=(1, 2)), expected_u, atol=1)
    np.testing.assert_allclose(seg.flow[..., 1].mean(axis=(1, 2)), expected_u - 40, atol=1)

    seg = examples["seg_computed"]  # no flow_frames folder: Farneback between the 30 frames
    assert seg.fps == 30.0 and seg.frames.shape == (30, 64, 113, 3) and seg.flow.shape == (29, 64, 113, 2)
    np.testing.assert_array_equal(_source_frames(seg.frames, real_videos[f"{pancake}.mkv"].frames), range(90, 120))
    track = read_video(videos_dir / f"{pancake}.mkv", max_frames=130, audio_sample_rate=16000).audio
    lag, corr = _audio_lag(seg.audio, track, 3 * 16000)
    assert abs(lag) <= 32 and corr > 0.95

    summary = json.loads((out / "EPIC_100_test_timestamps-summary.json").read_text())
    assert summary["segments_from"] == {"timestamps": 2}
    assert summary["flow_sources"] == {"epic": 1, "farneback": 1}
    assert summary["skipped_counts"] == {"video": 1, "audio": 1, "flow": 1}
    reasons = {s["video"]: (s["kind"], s["reason"]) for s in summary["skipped"]}
    assert reasons["seg_no_flow"][0] == "flow" and "26 of 26 u/v files are missing" in reasons["seg_no_flow"][1]
    assert "frame_0000000063.jpg" in reasons["seg_no_flow"][1]
    assert reasons["seg_short_audio"][0] == "audio" and "the audio track covers" in reasons["seg_short_audio"][1]
    assert reasons["seg_past_end"][0] == "video"
    assert "skipped 1 segment(s) without their flow frames" in captured.out


def test_epic_timestamps_win_over_frame_numbers_for_a_video_file(tmp_path, videos_dir, real_videos):
    """A 30 fps re-encode with Epic's 60 fps frame numbers: RGB and audio by time, flow by frame number."""
    pancake = "flipping_pancake__decord"
    root = tmp_path / "epic"
    root.mkdir()
    (root / f"{pancake}.mkv").symlink_to(videos_dir / f"{pancake}.mkv")
    _write_epic_flow(root / "flipping" / "flow_frames" / pancake, range(80, 131), 64, 113)
    csv_path = tmp_path / "seg.csv"
    csv_path.write_text("narration_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
                        f"a,{pancake},00:00:03.00,00:00:04.00,181,240\n")
    result = prepare(csv_path, tmp_path / "out", video_root=root, min_resize=64, with_flow=True, flow_stride=2,
                     progress=False)
    assert result.flow_sources == {"epic": 1}
    seg = _parse_all(result.shards)["a"]
    assert seg.frames.shape == (30, 64, 113, 3)  # 3.00-4.00 s at 30 fps, not frames 181..240
    np.testing.assert_array_equal(_source_frames(seg.frames, real_videos[f"{pancake}.mkv"].frames), range(90, 120))
    first, last = flow_lib.epic_flow_numbers(181, 240, 2)
    assert (first, last) == (91, 120)
    np.testing.assert_allclose(seg.flow[..., 0].mean(axis=(1, 2)),
                               100 + first + np.linspace(0, last - first, 29).round(), atol=1)


def test_epic_timestamps_on_a_frames_dir_use_frames_fps(tmp_path):
    root = tmp_path / "epic"
    write_frames_dir(root / "P01" / "rgb_frames" / "P01_11", level_frames(range(10, 110, 10)))  # 10 frames
    csv_path = tmp_path / "seg.csv"
    csv_path.write_text("narration_id,video_id,start_timestamp,stop_timestamp\nx,P01_11,00:00:00.20,00:00:00.50\n")
    result = prepare(csv_path, tmp_path / "out", video_root=root, frames_fps=10, progress=False)
    seg = _parse_all(result.shards)["x"]
    np.testing.assert_allclose(seg.frames.mean(axis=(1, 2, 3)), [30, 40, 50], atol=2)  # frames 2, 3, 4 (0-based)
    assert seg.fps == 10.0


def test_real_epic_validation_csv_validates(epic_dir):
    rows, layout = read_rows(epic_dir / "EPIC_100_validation.csv")
    assert layout == "epic" and len(rows) == 9668
    assert rows[0].id == "P01_11_0" and rows[0].frame_range == (0, 113) and rows[0].time_span == (0.0, 1.89)
    assert all(0 <= r.labels["verb"][0] < EPIC_NUM_CLASSES["verb"] for r in rows)
    test_rows, _ = read_rows(epic_dir / "EPIC_100_test_timestamps.csv")
    assert len(test_rows) == 13092 and test_rows[0].labels == {}
    assert test_rows[0].time_span == pytest.approx((2.86, 3.87)) and test_rows[0].frame_range == (142, 193)


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


def test_bad_epic_timestamps_and_segment_columns(tmp_path, capsys):
    head = "narration_id,video_id,start_timestamp,stop_timestamp\n"
    err = _run_bad(tmp_path, capsys, head + "x,P01_01,00:00:xx,00:00:01.00\n")
    assert "bad.csv:2: column 'start_timestamp' must be a time HH:MM:SS.ff, got '00:00:xx'" in err
    err = _run_bad(tmp_path, capsys, head + "x,P01_01,00:00:02.00,00:00:01.50\n")
    assert "bad.csv:2: stop_timestamp 00:00:01.50 must be after start_timestamp 00:00:02.00" in err
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,start_timestamp\nx,P01_01,00:00:01.00\n")
    assert "no column 'stop_timestamp' to go with 'start_timestamp'" in err
    err = _run_bad(tmp_path, capsys, "narration_id,video_id,verb_class,noun_class\nx,P01_01,1,2\n")
    assert "no column 'start_frame' or 'start_timestamp'" in err
    err = _run_bad(tmp_path, capsys, "path,label\na.mp4,1\n", "--flow", "--flow_source", "epic")
    assert "--flow_source epic reads Epic-Kitchens flow_frames" in err
    assert parse_timestamp("01:02:03.5") == 3723.5 and parse_timestamp("02:03.25") == 123.25
    for bad in ("00:61:00", "1.5", "00:00:60.0", "-00:00:01"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_all_videos_unreadable_is_an_error(tmp_path, capsys):
    csv_path = tmp_path / "gone.csv"
    csv_path.write_text("path,label\nmissing.mp4,0\n")
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(tmp_path / "out")])
    assert code == 1 and "none of the 1 videos" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert mtv.cli.run(["data"]) == 2
    assert mtv.cli.run(["data", "convert", "x.csv", "--out", str(tmp_path)]) == 2
    assert "the subcommands are 'prepare' and 'bench'" in capsys.readouterr().err
    assert mtv.cli.run(["data", "prepare", "x.csv"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert mtv.cli.run(["data", "prepare", "--out", str(tmp_path)]) == 2
    assert mtv.cli.run(["data", "prepare", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_old_shards_flag_still_works_with_a_warning(tmp_path, videos_dir, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\narm_wrestling__mmaction2_demo.mp4,6\neye_makeup_audio__mmaction2_test.avi,3\n")
    out = tmp_path / "records"
    args = ["data", "prepare", str(csv_path), "--out", str(out), "--video_root", str(videos_dir), "--max_frames", "4",
            "--min_resize", "32"]
    assert mtv.cli.run([*args, "--shards", "1", "--num_shards", "2"]) == 2
    assert "disagree" in capsys.readouterr().err and not out.exists()
    assert mtv.cli.run([*args, "--shards", "1"]) == 0
    captured = capsys.readouterr()
    assert "--shards is deprecated" in captured.err and "to 1 shard(s)" in captured.out
