"""The one video preprocessor: its settings, its resize and scaling, and `mtv predict` seeing evaluation's pixels."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow as tf

from mtv.data.preprocessor import VideoPreprocessor, normalize, resize_smallest, video_input_shape
from mtv.errors import ConfigError


def _stub(metadata=None, **shape):
    return types.SimpleNamespace(metadata=metadata, **shape)


def test_settings_from_model_metadata_and_fallback():
    meta = {"preprocessing": {"min_resize": 40, "zero_centering": False}}
    pre = VideoPreprocessor.from_model(_stub(meta, input_shapes={"rgb": (8, 32, 32, 3)}))
    assert pre == VideoPreprocessor(crop_size=32, min_resize=40, num_crops=1, zero_centering=False)
    # No metadata: evaluation's rule, the short side resized to the crop (not Inception's 256/224 margin).
    plain = VideoPreprocessor.from_model(_stub(input_shapes={"rgb": (8, 32, 32, 3)}), num_crops=3)
    assert (plain.min_resize, plain.num_crops, plain.zero_centering) == (32, 3, True)
    assert VideoPreprocessor.from_model(_stub(input_shapes={"rgb": (8, 32, 32, 3)}), min_resize=50).min_resize == 50
    mm = _stub(input_shapes={"rgb": (16, 48, 48, 3), "audio": (800, 128, 1)})
    assert video_input_shape(mm) == (16, 48, 48, 3)
    with pytest.raises(ConfigError, match="32x48"):
        VideoPreprocessor.from_model(_stub(input_shapes={"rgb": (8, 32, 48, 3)}))
    with pytest.raises(ConfigError, match="num_crops"):
        VideoPreprocessor(32, 36, num_crops=2)


def test_resize_follows_dmvr_and_is_the_same_frame_by_frame():
    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 70, 3), dtype=np.uint8)
    pre = VideoPreprocessor(crop_size=32, min_resize=37)
    clip = resize_smallest(tf.constant(frames), 37).numpy()
    assert clip.shape == (5, 37, 53, 3) and clip.dtype == np.uint8  # 70 * 37 // 48 = 53: floor, not round
    # Resizing each frame while decoding (what `mtv predict` does) gives the bytes of resizing the clip.
    np.testing.assert_array_equal(np.stack([pre.resize(f) for f in frames]), clip)
    np.testing.assert_array_equal(pre.resize(clip), clip)  # already at min_resize: untouched


def test_normalize_numpy_and_tensorflow_agree_exactly():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for centred in (True, False):
        from_numpy = normalize(values, centred)
        assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
        np.testing.assert_array_equal(from_numpy, normalize(tf.constant(values), centred).numpy())
    assert normalize(values).min() == -1.0 and normalize(values).max() == 1.0


def test_views_layout_and_range():
    clips = np.random.default_rng(1).integers(0, 256, (2, 4, 40, 52, 3), dtype=np.uint8)
    views = VideoPreprocessor(crop_size=32, min_resize=36, num_crops=3)(clips)
    assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.float32
    assert -1.0 <= views.min() and views.max() <= 1.0
    one = VideoPreprocessor(crop_size=32, min_resize=36)(clips)
    assert one.shape == (2, 4, 32, 32, 3)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    from mtv.io.presets import save_preset
    from tests.helpers import fixture_model

    path = tmp_path_factory.mktemp("preset") / "tiny"
    save_preset(fixture_model(), path, metadata={
        "class_names": list("abcde"), "stride": 2, "test_views": "2x3",
        "preprocessing": {"min_resize": 36, "crop_size": 32, "zero_centering": True}})
    return path


def test_prediction_uses_the_evaluation_pixels(preset, videos_dir):
    from mtv.data.transforms import video_to_eval_views
    from mtv.data.video import load_video
    from mtv.eval.prediction import eval_views
    from mtv.io.presets import load_preset

    clip = videos_dir / "arm_wrestling__mmaction2_demo.mp4"  # 340x256: far above min_resize 36
    views, config, decoded = eval_views(clip, load_preset(preset))
    full = load_video(clip, with_audio=False)
    want = video_to_eval_views(full, num_frames=8, stride=2, num_clips=2, crop_size=32, min_resize=36,
                               three_crops=True)
    # Only the sampled frames are decoded (by seeking), and they give the full decode's views.
    assert (config.num_test_clips, config.num_spatial_crops, decoded) == (2, 3, 2 * 8)
    np.testing.assert_array_equal(views, want)
