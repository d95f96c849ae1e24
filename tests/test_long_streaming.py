"""Streaming recognition: backbone tokens, the memory as explicit state, and its SavedModel round trip."""

from pathlib import Path

import numpy as np
import pytest

from mtv.errors import ExportError
from mtv.long.features import global_sequence, pooled, step_features
from mtv.long.memory import KMeansMemory
from mtv.long.streaming import STEP_SIGNATURE, StreamingClassifier, export_streaming

TINY = Path(__file__).resolve().parents[1] / "configs" / "camera_motion" / "camera_motion_tiny.py"


@pytest.fixture(scope="module")
def streaming():
    """The two-view tiny camera-motion MTV (8x32x32, token classifier) in a 6-slot streaming classifier."""
    from mtv.models.builder import build_model

    backbone = build_model(str(TINY), seed=0).backbone
    return StreamingClassifier(backbone, num_classes=5, memory_size=6, num_iterations=2)


def _clips(count, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, count, 8, 32, 32, 3)).astype(np.float32)


def test_token_sequence_pools_to_the_backbone_output(streaming):
    backbone = streaming.backbone
    x = _clips(1)[:, 0]
    sequence = global_sequence(backbone, x)
    # Two views of 2 and 4 temporal tokens tiled to 4 steps, plus the global CLS token; width 32 + 32.
    assert tuple(sequence.shape) == (2, 5, 64)
    np.testing.assert_allclose(np.asarray(pooled(backbone, sequence)), np.asarray(backbone(x)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(step_features(backbone, x)), np.asarray(sequence)[:, 1:])


def test_the_stream_is_the_step_by_step_recurrence_from_an_empty_memory(streaming):
    stream = _clips(3, seed=1)
    logits = np.asarray(streaming(stream))
    assert logits.shape == (2, 3, 5)
    memory, weights = streaming.empty_state(2)
    kmeans = KMeansMemory(2)
    for s in range(3):
        tokens = streaming.clip_tokens(stream[:, s])
        want_memory, want_weights = kmeans(memory, weights, tokens)
        memory, weights, step_logits = streaming.step(memory, weights, stream[:, s])
        np.testing.assert_allclose(np.asarray(memory), np.asarray(want_memory), atol=1e-6)
        np.testing.assert_allclose(np.asarray(step_logits), logits[:, s], atol=1e-5)
        # Fixed size, and every token of every clip so far is counted once (5 tokens per clip).
        assert tuple(memory.shape) == (2, 6, 64)
        np.testing.assert_allclose(np.asarray(weights).sum(1), [5 * (s + 1)] * 2)


def test_the_step_exports_with_the_memory_as_state_in_and_out(streaming, tmp_path):
    import tensorflow as tf

    path = export_streaming(streaming, tmp_path / "streaming")
    step = tf.saved_model.load(str(path)).signatures[STEP_SIGNATURE]
    stream = _clips(2, seed=2)
    memory, weights = (np.asarray(a) for a in streaming.empty_state(2))
    want_memory, want_weights = memory, weights
    for s in range(2):
        out = step(memory=tf.constant(memory), memory_weights=tf.constant(weights), frames=tf.constant(stream[:, s]))
        assert set(out) == {"memory", "memory_weights", "logits", "probabilities"}
        want_memory, want_weights, want_logits = streaming.step(want_memory, want_weights, stream[:, s])
        np.testing.assert_allclose(out["logits"].numpy(), np.asarray(want_logits), atol=1e-5)
        np.testing.assert_allclose(out["memory"].numpy(), np.asarray(want_memory), atol=1e-5)
        memory, weights = out["memory"].numpy(), out["memory_weights"].numpy()
    np.testing.assert_allclose(weights.sum(1), [10, 10])
    with pytest.raises(ExportError, match="exists and is not an empty directory"):
        export_streaming(streaming, path)


def test_the_memory_benchmark_streams_with_constant_state():
    from benchmarks.streaming_memory import stream

    record = stream(minutes=0.05, memory_size=4)  # 3 s: three 1-s clips of 5 tokens
    assert record["clips"] == 3 and record["memory_tokens"] == 4 and record["tokens_absorbed"] == 15.0
    assert record["peak_rss_mb"] > 0
