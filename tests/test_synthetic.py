"""The generated camera-motion data moves the way its class says."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mtv.data import synthetic
from mtv.errors import DataError


def _shift(clip: np.ndarray) -> np.ndarray:
    """Mean (dx, dy) displacement of the content between consecutive frames (phase correlation)."""
    grey = clip.astype(np.float32).mean(-1)
    window = cv2.createHanningWindow(grey.shape[1:][::-1], cv2.CV_32F)
    return np.mean([cv2.phaseCorrelate(grey[k], grey[k + 1], window=window)[0] for k in range(len(grey) - 1)],
                   axis=0)


def _scale(clip: np.ndarray) -> float:
    """How much larger the content of the last frame is than that of the first (best of a scale grid)."""
    first, last = clip[0].astype(np.float32), clip[-1].astype(np.float32)
    size = clip.shape[1]
    best, best_err = 1.0, np.inf
    for s in np.linspace(0.5, 2.0, 61):
        if s >= 1:  # content grew: the centre of the first frame, enlarged, is the last frame
            crop = int(round(size / s))
            lo = (size - crop) // 2
            guess = cv2.resize(first[lo:lo + crop, lo:lo + crop], (size, size), interpolation=cv2.INTER_LINEAR)
            err = np.mean((guess - last) ** 2)
        else:
            crop = int(round(size * s))
            lo = (size - crop) // 2
            guess = cv2.resize(last[lo:lo + crop, lo:lo + crop], (size, size), interpolation=cv2.INTER_LINEAR)
            err = np.mean((guess - first) ** 2)
        if err < best_err:
            best, best_err = s, err
    return best


@pytest.fixture(scope="module")
def textures():
    return synthetic.texture_sources(4, seed=3)


def test_class_list():
    names = synthetic.class_names()
    assert len(names) == 13 and names[0] == "static" and len(set(names)) == 13
    assert {n.rsplit("_", 1)[1] for n in names[1:]} == {"slow", "fast"}


@pytest.mark.parametrize("name, dx_sign, dy_sign", [
    ("pan_left_fast", 1, 0), ("pan_right_fast", -1, 0), ("tilt_up_fast", 0, 1), ("tilt_down_fast", 0, -1)])
def test_pans_and_tilts_move_the_content_the_other_way(textures, name, dx_sign, dy_sign):
    rng = np.random.default_rng(0)
    for _ in range(3):
        clip = synthetic.render_clip(textures[0], name, num_frames=8, size=32, rng=rng, shake=0.0,
                                     photometric=False)
        dx, dy = _shift(clip)
        for value, sign in ((dx, dx_sign), (dy, dy_sign)):
            if sign:
                assert np.sign(value) == sign and abs(value) > 1.0, (name, dx, dy)
            else:
                assert abs(value) < 0.4, (name, dx, dy)


def test_static_on_a_still_image_does_not_move(textures):
    clip = synthetic.render_clip(textures[0], "static", num_frames=8, size=32, rng=np.random.default_rng(0),
                                 shake=0.0, photometric=False)
    assert clip.std() > 10 and np.array_equal(clip[0], clip[-1])


def test_fast_is_faster_than_slow(textures):
    rng = np.random.default_rng(1)
    slow = [abs(_shift(synthetic.render_clip(textures[1], "pan_right_slow", num_frames=8, size=32, rng=rng,
                                            speed_factor=1.0, shake=0.0))[0]) for _ in range(3)]
    fast = [abs(_shift(synthetic.render_clip(textures[1], "pan_right_fast", num_frames=8, size=32, rng=rng,
                                            speed_factor=1.0, shake=0.0))[0]) for _ in range(3)]
    assert min(fast) > 1.5 * max(slow)  # nominal speeds 2.0 and 0.75 px per frame


@pytest.mark.parametrize("name, grows", [("zoom_in_fast", True), ("zoom_out_fast", False)])
def test_zooms_enlarge_or_shrink_the_content(textures, name, grows):
    rng = np.random.default_rng(2)
    clip = synthetic.render_clip(textures[2], name, num_frames=8, size=32, rng=rng, speed_factor=1.0, shake=0.0,
                                 photometric=False)
    scale = _scale(clip)
    expected = 1.0 / (1 - 0.08) ** 7 if grows else (1 + 0.08) ** -7  # window side change over 7 frames
    assert scale == pytest.approx(expected, rel=0.12)


def test_generate_is_balanced_deterministic_and_uses_video_frames(videos_dir):
    sources = synthetic.video_sources(videos_dir, split="train", min_resize=64, max_frames=40)
    assert len(sources) == 4 and all(s.shape[1] == 64 or s.shape[2] == 64 for s in sources)
    clips, labels = synthetic.generate(26, sources=sources, num_frames=8, size=32, seed=7)
    again, labels2 = synthetic.generate(26, sources=sources, num_frames=8, size=32, seed=7)
    assert clips.shape == (26, 8, 32, 32, 3) and clips.dtype == np.uint8
    np.testing.assert_array_equal(clips, again)
    np.testing.assert_array_equal(labels, labels2)
    assert np.bincount(labels, minlength=13).tolist() == [2] * 13
    held = synthetic.video_sources(videos_dir, split="heldout", min_resize=64, max_frames=20)
    assert len(held) == 1


def test_missing_sources_are_a_data_error(tmp_path):
    with pytest.raises(DataError):
        synthetic.video_sources(tmp_path)
    with pytest.raises(DataError):
        synthetic.generate(2, sources=[], num_frames=8, size=32, seed=0)


def test_write_video_round_trips(tmp_path, textures):
    from mtv.data.video import read_video

    clip = synthetic.render_clip(textures[0], "pan_left_slow", num_frames=10, size=48, rng=np.random.default_rng(0))
    path = synthetic.write_video(tmp_path / "pan.avi", clip)
    back = read_video(path, with_audio=False).frames
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip).mean() < 6
