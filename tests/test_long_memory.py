"""The K-token memory update is exactly weighted K-means with the documented init, iterations and empty rule."""

import numpy as np
import pytest

from mtv.errors import ConfigError, ShapeError
from mtv.long.memory import KMeansMemory, seed_indices


def numpy_weighted_kmeans(memory, weights, tokens, iterations):
    """Direct weighted K-means, one example at a time, in float64 (the definition in mtv/long/memory.py)."""
    out_centres, out_counts = [], []
    for m, w, x in zip(memory.astype(np.float64), weights.astype(np.float64), tokens.astype(np.float64),
                       strict=True):
        k, n = len(m), len(x)
        centres = m.copy() if w.sum() > 0 else x[[i * n // k for i in range(k)]].copy()
        points = np.concatenate([centres, x])
        point_weights = np.concatenate([w, np.ones(n)])
        for _ in range(iterations):
            distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
            assign = distances.argmin(axis=1)
            counts = np.array([point_weights[assign == j].sum() for j in range(k)])
            for j in range(k):
                if counts[j] > 0:
                    members = assign == j
                    centres[j] = (point_weights[members, None] * points[members]).sum(0) / counts[j]
        out_centres.append(centres)
        out_counts.append(counts)
    return np.stack(out_centres), np.stack(out_counts)


def _case(seed, batch=3, k=5, n=7, d=6):
    rng = np.random.default_rng(seed)
    memory = rng.normal(size=(batch, k, d)).astype(np.float32)
    weights = rng.integers(1, 5, size=(batch, k)).astype(np.float32)
    tokens = rng.normal(size=(batch, n, d)).astype(np.float32)
    # Example 0: a far-away slot that has absorbed nothing (weight 0) gets no member and must keep its place.
    memory[0, 4] = 100.0
    weights[0, 4] = 0.0
    return memory, weights, tokens


@pytest.mark.parametrize("iterations", [1, 3])
def test_update_matches_numpy_weighted_kmeans(iterations):
    memory, weights, tokens = _case(iterations)
    centres, counts = KMeansMemory(iterations)(memory, weights, tokens)
    want_centres, want_counts = numpy_weighted_kmeans(memory, weights, tokens, iterations)
    np.testing.assert_allclose(np.asarray(centres), want_centres, atol=1e-5)
    np.testing.assert_allclose(np.asarray(counts), want_counts, atol=1e-5)
    np.testing.assert_allclose(np.asarray(centres)[0, 4], 100.0)  # the empty cluster stayed put
    # Every token lands in exactly one centre: the weights absorbed grow by N per update.
    np.testing.assert_allclose(np.asarray(counts).sum(1), weights.sum(1) + tokens.shape[1], rtol=1e-6)


@pytest.mark.parametrize("k", [4, 9])
def test_an_empty_memory_is_seeded_from_the_clip(k):
    rng = np.random.default_rng(k)
    tokens = rng.normal(size=(2, 7, 3)).astype(np.float32)
    memory, weights = np.zeros((2, k, 3), np.float32), np.zeros((2, k), np.float32)
    centres, counts = KMeansMemory(2)(memory, weights, tokens)
    want_centres, want_counts = numpy_weighted_kmeans(memory, weights, tokens, 2)
    np.testing.assert_allclose(np.asarray(centres), want_centres, atol=1e-5)
    np.testing.assert_allclose(np.asarray(counts), want_counts, atol=1e-5)
    np.testing.assert_allclose(np.asarray(counts).sum(1), [7, 7])
    # K=4 of N=7: tokens 0, 1, 3, 5; K=9 of 7: every token, 0-1 and 3-4 twice.
    assert seed_indices(7, 4) == [0, 1, 3, 5] and seed_indices(7, 9) == [0, 0, 1, 2, 3, 3, 4, 5, 6]


def test_bad_shapes_and_settings_are_named():
    layer = KMeansMemory(1)
    with pytest.raises(ShapeError, match="width 4 but the clip's tokens have 3"):
        layer(np.zeros((1, 2, 4), np.float32), np.zeros((1, 2), np.float32), np.zeros((1, 5, 3), np.float32))
    with pytest.raises(ShapeError, match=r"weights \(1, 3\) do not match the memory's 2 tokens"):
        layer(np.zeros((1, 2, 3), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 5, 3), np.float32))
    with pytest.raises(ConfigError, match="num_iterations must be a positive integer, got 0"):
        KMeansMemory(0)
