"""The shipped default model (mtv/embedded/camera-motion) loads offline and recognises camera motion."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtv.data import synthetic
from mtv.io.presets import load_preset

PRESET = Path(__file__).resolve().parents[1] / "mtv" / "embedded" / "camera-motion"


@pytest.fixture(scope="module")
def model():
    return load_preset(PRESET)


def test_preset_is_small_and_describes_itself(model):
    size = sum(p.stat().st_size for p in PRESET.iterdir())
    assert size < 2 * 2**20
    assert json.loads((PRESET / "config.json").read_text())["version"] == 2  # weights under their Flax names
    meta = model.metadata
    assert meta["class_names"] == synthetic.class_names()
    pre = meta["preprocessing"]
    assert (pre["num_frames"], pre["stride"], pre["crop_size"]) == (16, 1, 64)
    assert model.input_shapes == {"rgb": (16, 64, 64, 3)}
    assert {"min_resize", "clips", "crops", "zero_centering"} <= set(pre)
    assert meta["accuracy"]["top1"] > 50 and "never used in training" in meta["accuracy"]["source"]
    assert meta["retrain_command"].startswith("mtv train --config=configs/camera_motion/camera_motion_mtv.py")


def test_fresh_held_out_clips_are_mostly_right(model, videos_dir):
    sources = synthetic.video_sources(videos_dir, split="heldout", min_resize=128)
    clips, labels = synthetic.generate(104, sources=sources, num_frames=16, size=64, seed=2024)
    logits = np.concatenate([np.asarray(model(clips[i:i + 26].astype(np.float32) / 127.5 - 1.0))
                             for i in range(0, len(clips), 26)])
    accuracy = float((logits.argmax(1) == labels).mean() * 100)
    assert accuracy > 50, accuracy  # chance is 7.7 %


def _moving_window(frames: np.ndarray, vx: float, vy: float, count: int = 16, side: int = 128) -> np.ndarray:
    """A side x side window moving (vx, vy) px per frame over consecutive real frames."""
    height, width = frames.shape[1:3]
    out = []
    for k in range(count):
        x0 = width / 2 - side / 2 + vx * (k - count / 2)
        y0 = height / 2 - side / 2 + vy * (k - count / 2)
        matrix = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])
        out.append(cv2.warpAffine(frames[30 + k], matrix, (side, side),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


@pytest.mark.parametrize("expected, vx, vy", [("pan_right_fast", 8, 0), ("pan_left_fast", -8, 0),
                                              ("tilt_down_fast", 0, 8), ("tilt_up_fast", 0, -8)])
def test_a_real_clip_panned_by_the_test(model, videos_dir, tmp_path, expected, vx, vy):
    from mtv import predict
    from mtv.data.video import read_video

    frames = read_video(videos_dir / "flipping_pancake__decord.mkv", max_frames=60, with_audio=False).frames
    # 8 px per frame in a 128-px video = 4 px per frame once predict resizes it to 64 px: 'fast'.
    path = synthetic.write_video(tmp_path / f"{expected}.avi", _moving_window(frames, vx, vy))
    result = predict(path, model=model, top=3)
    assert result["heads"]["logits"][0]["label"] == expected, result["heads"]
