"""DMVR's temporal sampling maths, with index values worked out by hand."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mtv.data.sampling import clip_indices, eval_clip_indices, eval_clip_offsets, train_clip_indices
from mtv.errors import DataError


def test_train_offsets_cover_exactly_the_starts_that_fit():
    # 10 frames, 3 frames at stride 2 span 5 frames: starts 0..5 fit (DMVR: maxval = 10 - 2 * 2 = 6).
    starts = set()
    for seed in range(300):
        indices = train_clip_indices(10, 3, 2, np.random.default_rng(seed))
        assert list(np.diff(indices)) == [2, 2]
        starts.add(int(indices[0]))
    assert starts == {0, 1, 2, 3, 4, 5}


def test_train_sampling_is_reproducible_with_the_same_generator():
    a = train_clip_indices(100, 8, 4, np.random.default_rng(7))
    b = train_clip_indices(100, 8, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_eval_middle_clip():
    # One clip: offset (20 - 4 * 2) // 2 = 6.
    np.testing.assert_array_equal(eval_clip_indices(20, 4, 2, 1), [[6, 8, 10, 12]])


def test_eval_linspace_clips():
    # Three clips: offsets linspace(0, 20 - 8, 3) = 0, 6, 12.
    expected = [[0, 2, 4, 6], [6, 8, 10, 12], [12, 14, 16, 18]]
    np.testing.assert_array_equal(eval_clip_indices(20, 4, 2, 3), expected)


def test_eval_linspace_offsets_are_truncated():
    # linspace(0, 17 - 4, 3) = 0, 6.5, 13 -> 0, 6, 13 (tf.cast truncates).
    np.testing.assert_array_equal(eval_clip_offsets(17, 4, 1, 3), [0, 6, 13])
    # Four clips over 32 - 16 = 16: 0, 5.33, 10.67, 16 -> 0, 5, 10, 16.
    np.testing.assert_array_equal(eval_clip_offsets(32, 8, 2, 4), [0, 5, 10, 16])


def test_short_video_is_padded_by_looping_with_a_warning(caplog):
    # 5 frames, 4 at stride 2: 0, 2, 4, then 6 wraps to 1.
    with caplog.at_level(logging.WARNING):
        indices = train_clip_indices(5, 4, 2, np.random.default_rng(0), source="tiny.mp4")
    np.testing.assert_array_equal(indices, [0, 2, 4, 1])
    assert "padded by looping" in caplog.text and "tiny.mp4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(eval_clip_indices(3, 4, 1, 2), [[0, 1, 2, 0], [0, 1, 2, 0]])
    assert "padded by looping" in caplog.text


def test_no_warning_when_the_clip_fits(caplog):
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(clip_indices(2, 8, 3, 2), [2, 4, 6])
        eval_clip_indices(8, 4, 2, 1)
    assert "padded" not in caplog.text


@pytest.mark.parametrize("args", [(0, 4, 1), (10, 0, 1), (10, 4, 0)])
def test_bad_arguments(args):
    with pytest.raises(DataError):
        eval_clip_indices(*args, num_clips=1)
    with pytest.raises(DataError, match="num_clips"):
        eval_clip_indices(10, 2, 1, 0)
