"""Spatial transforms, augmentations, eval views, mixup and label smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mtv.data import randaugment
from mtv.data import transforms as T
from mtv.data.config import DataConfig, data_config
from mtv.data.sampling import eval_clip_indices
from mtv.data.video import Video
from mtv.errors import ConfigError, ShapeError
from tests.data.synthetic import coordinate_frames


def _offsets(crop: np.ndarray) -> tuple[int, int]:
    """(row, column) of a crop of `coordinate_frames` (blue = row, green = column)."""
    return int(crop[0, 0, 0, 2]), int(crop[0, 0, 0, 1])


def test_resize_smallest_sizes_and_dtype():
    assert T.resize_smallest(tf.zeros([2, 40, 60, 3], tf.uint8), 20).shape == (2, 20, 30, 3)
    assert T.resize_smallest(tf.zeros([2, 60, 40, 3], tf.uint8), 20).shape == (2, 30, 20, 3)
    assert T.resize_smallest(tf.zeros([1, 40, 60, 3], tf.uint8), 20).dtype == tf.uint8
    flow = T.resize_smallest(tf.ones([1, 40, 60, 2]) * 0.25, 20, is_flow=True)
    np.testing.assert_allclose(flow.numpy(), 0.125)  # half the size, half the displacement


def test_random_crop_is_a_window_shared_by_all_frames():
    frames = coordinate_frames(3, 40, 60)
    seen = set()
    for seed in range(12):
        crop = T.random_crop(tf.constant(frames), 16, seed=(seed, 0)).numpy()
        y, x = _offsets(crop)
        assert 0 <= y <= 24 and 0 <= x <= 44
        np.testing.assert_array_equal(crop, frames[:, y:y + 16, x:x + 16])
        seen.add((y, x))
    assert len(seen) > 6


def test_random_crop_pads_small_frames():
    crop = T.random_crop(tf.ones([2, 10, 30, 3], tf.uint8), 16, seed=(1, 2))
    assert crop.shape == (2, 16, 16, 3)
    assert crop.numpy()[:, :3].max() == 0  # 3 rows of zero padding above the 10-row frame


def test_random_flip_flips_the_whole_clip_half_the_time():
    frames = coordinate_frames(2, 4, 6)
    flips = 0
    for seed in range(40):
        out = T.random_flip(tf.constant(frames), seed=(seed, 3)).numpy()
        flipped = np.array_equal(out, frames[:, :, ::-1])
        assert flipped or np.array_equal(out, frames)
        flips += flipped
    assert 8 < flips < 32


def test_random_flip_negates_horizontal_flow():
    flow = tf.constant(np.stack([np.full((1, 2, 3), 0.5), np.full((1, 2, 3), 0.25)], -1), tf.float32)
    outs = {tuple(T.random_flip(flow, seed=(s, 0), is_flow=True).numpy()[0, 0, 0]) for s in range(20)}
    assert outs == {(0.5, 0.25), (-0.5, 0.25)}


def test_central_crop_position():
    crop = T.central_crop(tf.constant(coordinate_frames(1, 40, 60)), 20).numpy()
    assert _offsets(crop) == (10, 20)


@pytest.mark.parametrize("height, width, expected", [
    (20, 60, [(0, 0), (0, 20), (0, 40)]),   # wide: left, centre, right
    (61, 20, [(0, 0), (21, 0), (41, 0)]),   # tall: top, centre (ceil(41 / 2) = 21), bottom
    (20, 20, [(0, 0), (0, 0), (0, 0)]),
])
def test_three_spatial_crop_positions(height, width, expected):
    crops = T.three_spatial_crops(tf.constant(coordinate_frames(2, height, width)), 20).numpy()
    assert crops.shape == (3, 2, 20, 20, 3)
    assert [_offsets(c) for c in crops] == expected


def test_normalize_ranges():
    x = tf.constant([0, 51, 255], tf.uint8)
    np.testing.assert_allclose(T.normalize(x).numpy(), [-1.0, -0.6, 1.0], atol=1e-6)
    np.testing.assert_allclose(T.normalize(x, zero_centering=False).numpy(), [0.0, 0.2, 1.0], atol=1e-6)


def test_scale_jitter_sizes():
    frames = tf.zeros([1, 100, 200, 3], tf.uint8)
    sizes = {T.scale_jitter(frames, 0.9, 1.33, 1.0, seed=(s, 1)).shape[1:3] for s in range(10)}
    assert len(sizes) > 5
    assert all(90 <= h < 133 and 180 <= w < 266 for h, w in sizes)
    assert T.scale_jitter(frames, 0.9, 1.33, 0.0, seed=(1, 1)).shape == frames.shape


def test_color_augment_keeps_range_and_drop_makes_grey():
    frames = T.normalize(tf.constant(coordinate_frames(2, 8, 8) * 3))
    for seed in range(5):
        out = T.color_augment(frames, prob_color_augment=1.0, seed=(seed, 9)).numpy()
        assert out.min() >= -1.0 and out.max() <= 1.0
        assert not np.allclose(out, frames.numpy())
    same = T.color_augment(frames, prob_color_augment=0.0, prob_color_drop=0.0, seed=(0, 0))
    np.testing.assert_array_equal(same.numpy(), frames.numpy())
    grey = T.color_augment(frames, prob_color_augment=0.0, prob_color_drop=1.0, seed=(0, 0)).numpy()
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])
    with pytest.raises(ShapeError, match="float32"):
        T.color_augment(tf.zeros([1, 2, 2, 3], tf.uint8))


@pytest.mark.parametrize("op", randaugment.OPS)
def test_rand_augment_ops_are_temporally_consistent(op):
    frame = coordinate_frames(1, 24, 24)[0] * 4
    clip = tf.constant(np.stack([frame, frame, frame]))
    out = randaugment.apply_op(clip, op, 10, seed=(3, 4)).numpy()
    assert out.shape == clip.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_rand_augment_op_values():
    clip = tf.constant(coordinate_frames(1, 8, 8) * 9)
    np.testing.assert_array_equal(randaugment.apply_op(clip, "Invert", 10).numpy(), 255 - clip.numpy())
    posterized = randaugment.apply_op(clip, "Posterize", 10).numpy()  # 4 bits kept at magnitude 10
    np.testing.assert_array_equal(posterized, clip.numpy() & 0xF0)
    stretched = randaugment.apply_op(tf.constant([[[[10, 20, 30], [60, 70, 80]]]], tf.uint8), "AutoContrast", 0)
    np.testing.assert_array_equal(stretched.numpy(), [[[[0, 0, 0], [255, 255, 255]]]])
    cut = randaugment.apply_op(tf.zeros([2, 100, 100, 3], tf.uint8), "Cutout", 5, seed=(1, 1)).numpy()
    assert (cut == 128).sum() > 0 and (cut == 128).all(axis=-1).sum() == (cut == 128).sum() // 3


def test_rand_augment_changes_clips_and_is_seeded():
    clip = tf.constant(coordinate_frames(2, 16, 16) * 5)
    outs = [T.rand_augment(clip, 2, 9, seed=(s, 0)).numpy() for s in range(8)]
    assert sum(not np.array_equal(o, clip.numpy()) for o in outs) >= 4
    np.testing.assert_array_equal(T.rand_augment(clip, 2, 9, seed=(5, 0)).numpy(), outs[5])


def test_train_transform_shapes_ranges_and_seeding():
    cfg = data_config({"min_resize": 32, "crop_size": 24, "augmentation_params": {
        "do_jitter_scale": True, "scale_min_factor": 0.9, "scale_max_factor": 1.33, "prob_scale_jitter": 1.0,
        "do_color_augment": True, "prob_color_augment": 0.8, "prob_color_drop": 0.1}})
    clip = tf.constant(coordinate_frames(4, 40, 50) * 4)
    a = T.train_transform(clip, cfg, seed=(1, 2)).numpy()
    b = T.train_transform(clip, cfg, seed=(1, 2)).numpy()
    c = T.train_transform(clip, cfg, seed=(2, 2)).numpy()
    assert a.shape == (4, 24, 24, 3) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_flow_gets_the_same_crop_and_flip_as_rgb():
    cfg = DataConfig(min_resize=30, crop_size=20)
    rgb = coordinate_frames(2, 30, 45)
    flow = np.stack([rgb[..., 1], rgb[..., 2]], -1).astype(np.float32) / 100.0  # column, row
    for seed in range(6):
        out_rgb = T.train_transform(tf.constant(rgb), cfg, seed=(seed, 1)).numpy()
        out_flow = T.train_transform(tf.constant(flow), cfg, seed=(seed, 1), is_flow=True).numpy()
        rows = (out_rgb[..., 2] + 1) * 127.5
        np.testing.assert_allclose(out_flow[..., 1] * 100, rows, atol=0.01)
        cols = (out_rgb[..., 1] + 1) * 127.5
        np.testing.assert_allclose(np.abs(out_flow[..., 0]) * 100, cols, atol=0.01)


def test_video_to_eval_views_layout():
    frames = coordinate_frames(30, 32, 96)  # min_resize 32 = the short side: no resampling
    views = T.video_to_eval_views(Video(frames, 10.0), num_frames=4, stride=2, num_clips=3, crop_size=32,
                                  min_resize=32, three_crops=True)
    assert views.shape == (9, 4, 32, 32, 3) and views.dtype == np.float32
    assert views.min() >= -1.0 and views.max() <= 1.0
    values = np.round((views + 1.0) * 127.5).astype(int)
    clips = eval_clip_indices(30, 4, 2, 3)
    for clip in range(3):
        for crop in range(3):
            view = values[clip * 3 + crop]
            np.testing.assert_array_equal(view[:, 0, 0, 0], 8 * clips[clip])  # which frames
            assert view[0, 0, 0, 1] == 32 * crop  # left, centre, right
    single = T.video_to_eval_views(frames, num_frames=4, stride=2, num_clips=1, crop_size=32, min_resize=32,
                                   three_crops=False)
    assert single.shape == (1, 4, 32, 32, 3)
    assert np.round((single[0, 0, 0, 0, 1] + 1) * 127.5) == 32


def test_video_to_eval_views_resizes_then_crops():
    views = T.video_to_eval_views(np.zeros((5, 48, 64, 3), np.uint8), num_frames=2, stride=1, num_clips=2,
                                  crop_size=16, min_resize=24, three_crops=False, zero_centering=False)
    assert views.shape == (2, 2, 16, 16, 3) and views.max() == 0.0


def test_video_to_eval_views_rejects_bad_frames():
    with pytest.raises(ShapeError, match=r"\[T, H, W, 3\]"):
        T.video_to_eval_views(np.zeros((5, 8, 8), np.uint8), num_frames=2, stride=1, num_clips=1,
                              crop_size=8, min_resize=8, three_crops=False)
    with pytest.raises(ShapeError, match="uint8"):
        T.video_to_eval_views(np.zeros((5, 8, 8, 3), np.float32), num_frames=2, stride=1, num_clips=1,
                              crop_size=8, min_resize=8, three_crops=False)


def test_mixup_numpy():
    images = np.stack([np.zeros((2, 2, 2, 3)), np.ones((2, 2, 2, 3))]).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)
    mixed, mixed_labels, lam = T.mixup(images, {"verb": labels, "noun": labels}, 0.4, np.random.default_rng(3))
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed[0], 1.0 - lam)  # lam * zeros + (1 - lam) * ones
    np.testing.assert_allclose(mixed[1], lam)
    np.testing.assert_allclose(mixed_labels["verb"], [[lam, 1 - lam], [1 - lam, lam]], rtol=1e-6)
    np.testing.assert_allclose(mixed_labels["noun"], mixed_labels["verb"])


def test_mixup_tf():
    images = tf.constant(np.stack([np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2, 3))]), tf.float32)
    mixed, labels, lam = T.mixup_tf(images, tf.eye(2), 0.5, seed=(1, 2))
    lam = float(lam)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed.numpy()[0], 1.0 - lam, rtol=1e-5)
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_label_smoothing_and_one_hot():
    hot = T.one_hot([1, [0, 3]], 4)
    np.testing.assert_array_equal(hot, [[0, 1, 0, 0], [1, 0, 0, 1]])
    np.testing.assert_allclose(T.smooth_labels(hot[:1], 0.2), [[0.05, 0.85, 0.05, 0.05]])


def test_data_config_reads_scenic_fields_and_rejects_bad_values():
    cfg = data_config({"num_frames": 16, "stride": 1, "num_test_clips": 4, "do_three_spatial_crops": True,
                       "base_dir": "/ignored", "augmentation_params": {"do_rand_augment": True,
                                                                       "rand_augment_magnitude": 9}})
    assert (cfg.num_frames, cfg.stride, cfg.num_views, cfg.rand_augment_magnitude) == (16, 1, 12, 9)
    assert data_config(None) == DataConfig()
    with pytest.raises(ConfigError, match="prob_color_drop"):
        data_config({"augmentation_params": {"prob_color_drop": 1.5}})
    with pytest.raises(ConfigError, match="num_frames"):
        data_config({"num_frames": 0})
    with pytest.raises(ConfigError, match="'stride' must be an integer"):
        data_config({"stride": 1.5})
    with pytest.raises(ConfigError, match="scale_min_factor"):
        data_config({"augmentation_params": {"scale_min_factor": 2.0, "scale_max_factor": 1.0}})
