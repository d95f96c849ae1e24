"""Optical flow: Farnebäck on a translating pattern, the u/v JPEG layout, one shared representation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mtv.data.flow import (
    FLOW_BOUND,
    compute_flow,
    dequantize,
    epic_flow_numbers,
    epic_flow_stride,
    farneback_pixels,
    quantize,
    read_epic_flow,
    read_flow_dir,
    resize_flow,
    to_pixels,
)
from mtv.errors import DataError, ShapeError
from tests.data.synthetic import smooth_texture


def _translating(dx: int, dy: int, num: int = 4, size: int = 64) -> np.ndarray:
    """RGB frames of a smooth texture moving by (dx, dy) pixels per frame."""
    big = smooth_texture(size + 40, size + 40, seed=1)
    frames = [big[20 - dy * t:20 - dy * t + size, 20 - dx * t:20 - dx * t + size] for t in range(num)]
    return np.repeat(np.stack(frames)[..., None], 3, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("dx, dy", [(3, 0), (-2, 0), (0, 2), (2, -3)])
def test_farneback_sign_and_magnitude(dx, dy):
    pixels = farneback_pixels(_translating(dx, dy))
    assert pixels.shape == (3, 64, 64, 2)
    inner = pixels[:, 16:-16, 16:-16]  # away from the borders that enter or leave the view
    assert np.median(inner[..., 0]) == pytest.approx(dx, abs=0.3)  # horizontal, positive = right
    assert np.median(inner[..., 1]) == pytest.approx(dy, abs=0.3)  # vertical, positive = down
    flow = compute_flow(_translating(dx, dy))
    assert flow.dtype == np.float32 and flow.min() >= -1.0 and flow.max() < 1.0
    assert np.median(flow[:, 16:-16, 16:-16, 0]) * FLOW_BOUND == pytest.approx(dx, abs=0.3)


def test_quantisation_convention():
    q = quantize(np.array([0.0, FLOW_BOUND, -FLOW_BOUND, 2.5, 100.0]))
    np.testing.assert_array_equal(q, [128, 255, 0, 144, 255])
    np.testing.assert_allclose(dequantize(q), [0.0, 127 / 128, -1.0, 0.125, 127 / 128])
    np.testing.assert_allclose(to_pixels(dequantize(q))[3], 2.5)


def test_flow_dir_and_computed_flow_give_the_same_representation(tmp_path):
    frames = _translating(2, 1)
    computed = compute_flow(frames)
    stored = compute_flow(frames, as_uint8=True)
    for name, channel in (("u", 0), ("v", 1)):
        (tmp_path / name).mkdir()
        for t, image in enumerate(stored[..., channel]):  # PNG: lossless, so equality is exact
            cv2.imwrite(str(tmp_path / name / f"frame_{t + 1:010d}.png"), image)
    np.testing.assert_array_equal(read_flow_dir(tmp_path), computed)
    np.testing.assert_array_equal(read_flow_dir(tmp_path, as_uint8=True), stored)
    np.testing.assert_array_equal(read_flow_dir(tmp_path, frame_range=(1, 3)), computed[1:3])


def test_epic_jpeg_flow_dir(tmp_path):
    for name, value in (("u", 148), ("v", 108)):  # +20 and -20 levels: +-3.125 px at bound 20
        (tmp_path / name).mkdir()
        for t in range(1, 4):
            cv2.imwrite(str(tmp_path / name / f"frame_{t:010d}.jpg"), np.full((8, 12), value, np.uint8))
    flow = read_flow_dir(tmp_path)
    assert flow.shape == (3, 8, 12, 2)
    np.testing.assert_allclose(to_pixels(flow[..., 0]), 3.125, atol=0.2)
    np.testing.assert_allclose(to_pixels(flow[..., 1]), -3.125, atol=0.2)


def test_resize_flow_scales_displacements():
    flow = np.zeros((1, 10, 20, 2), np.float32) + np.array([0.1, 0.2], np.float32)
    out = resize_flow(flow, 20, 10)  # twice the height, half the width
    assert out.shape == (1, 20, 10, 2)
    np.testing.assert_allclose(out[0, 5, 5], [0.05, 0.4], rtol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="needs 'u' and 'v'"):
        read_flow_dir(tmp_path)
    with pytest.raises(ShapeError, match="at least 2"):
        compute_flow(np.zeros((1, 8, 8, 3), np.uint8))
    (tmp_path / "u").mkdir()
    (tmp_path / "v").mkdir()
    cv2.imwrite(str(tmp_path / "u" / "frame_1.jpg"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "v" / "frame_2.jpg"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="different names"):
        read_flow_dir(tmp_path)


def test_epic_flow_numbering_and_missing_frames(tmp_path):
    assert epic_flow_stride("P01_11") == 2 and epic_flow_stride("P01_101") == 1  # EPIC-55 / EPIC-100 videos
    with pytest.raises(DataError, match="not an Epic-Kitchens id.*--flow_stride"):
        epic_flow_stride("eye_makeup")
    # Start: Epic's rule (n - 1) // stride + 1; end: the flow frame of the last RGB frame with a successor.
    assert epic_flow_numbers(3, 7, 2) == ((3 - 1) // 2 + 1, (6 - 1) // 2 + 1)
    assert epic_flow_numbers(143, 193, 1) == (143, 192)
    assert epic_flow_numbers(5, 5, 1) == (5, 5)  # one frame: still one flow frame
    for name, offset in (("u", 100), ("v", 60)):
        (tmp_path / name).mkdir()
        for n in range(1, 6):
            cv2.imwrite(str(tmp_path / name / f"frame_{n:010d}.jpg"), np.full((4, 6), offset + n, np.uint8))
    flow = read_epic_flow(tmp_path, 2, 4, as_uint8=True)
    assert flow.shape == (3, 4, 6, 2)
    np.testing.assert_array_equal(flow[:, 0, 0], [[102, 62], [103, 63], [104, 64]])
    (tmp_path / "v" / "frame_0000000003.jpg").unlink()
    with pytest.raises(DataError, match=r"flow frames 2..4 of .*: 1 of 6 u/v files are missing, e.g. "
                                        r"'v/frame_0000000003.jpg'"):
        read_epic_flow(tmp_path, 2, 4)
