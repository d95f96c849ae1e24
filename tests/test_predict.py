"""`mtv predict` mechanics on real clips: views, averaging rules, JSON, frames dirs, bad input."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from mtv.cli import run
from mtv.errors import ConfigError, DataError
from mtv.eval.prediction import average_views, parse_views, predict
from mtv.io.presets import save_preset
from tests.helpers import fixture_model

LABELS = ["alpha", "beta", "gamma", "delta", "epsilon"]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "tiny"
    save_preset(fixture_model(), path, metadata={
        "class_names": LABELS, "stride": 2, "test_views": "2x3",
        "preprocessing": {"min_resize": 36, "crop_size": 32, "zero_centering": True}})
    return path


def test_parse_views_and_rules():
    assert parse_views("4x3") == (4, 3) and parse_views("1X1") == (1, 1)
    for bad in ("4", "4x2", "0x1", "ax3"):
        with pytest.raises(DataError):
            parse_views(bad)
    logits = np.array([[4.0, 0.0], [0.0, 1.0]])
    mean_logits = average_views(logits, "logits_mean")
    mean_probs = average_views(logits, "softmax_mean")
    np.testing.assert_allclose(mean_logits, np.exp([2, 0.5]) / np.exp([2, 0.5]).sum())
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(mean_probs, p.mean(0))
    with pytest.raises(ConfigError, match="rule"):
        average_views(logits, "median")


def test_predict_real_clip_matches_manual_views(preset, videos_dir):
    from mtv.data.transforms import video_to_eval_views
    from mtv.data.video import load_video
    from mtv.io.presets import load_preset

    clip = videos_dir / "arm_wrestling__mmaction2_demo.mp4"
    result = predict(clip, model=str(preset), top=3)
    assert result["views"] == "2x3" and len(result["heads"]["logits"]) == 3
    model = load_preset(preset)
    # The evaluation views of the fully decoded clip: predict resizes while decoding, to the same pixels.
    views = video_to_eval_views(load_video(clip), num_frames=8, stride=2, num_clips=2,
                                crop_size=32, min_resize=36, three_crops=True)
    probs = average_views(np.asarray(model(views)))
    top = result["heads"]["logits"][0]
    assert top["label"] == LABELS[int(np.argmax(probs))]
    assert top["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    probs_all = [r["probability"] for r in result["heads"]["logits"]]
    assert probs_all == sorted(probs_all, reverse=True)


def test_cli_json_and_text(preset, videos_dir, capsys):
    clip = str(videos_dir / "flipping_pancake__decord.mkv")
    assert run(["predict", clip, "--model", str(preset), "--views", "1x1", "--top", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["views"] == "1x1" and [r["label"] in LABELS for r in data["heads"]["logits"]] == [True, True]
    assert run(["predict", clip, "--model", str(preset), "--top", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(lines) == 5 and all(line.split(": ")[0] in LABELS for line in lines)


def test_frames_directory_and_short_video(preset, tmp_path, caplog):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 6):  # 5 frames: shorter than one 8-frame clip at stride 2
        cv2.imwrite(str(frames / f"img_{i}.jpg"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    with caplog.at_level("WARNING"):
        result = predict(frames, model=str(preset), views="1x1")
    assert result["num_frames_decoded"] == 5
    assert "loop" in caplog.text.lower()


def test_corrupt_and_non_video_files(preset, tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DataError, match="junk.mp4"):
        predict(junk, model=str(preset))
    audio_only = tmp_path / "tone.wav"
    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    assert run(["predict", str(audio_only), "--model", str(preset)]) == 1
    assert "no video stream" in capsys.readouterr().err
    assert run(["predict", str(tmp_path / "missing.mp4"), "--model", str(preset)]) == 1
