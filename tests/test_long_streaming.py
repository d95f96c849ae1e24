"""Streaming recognition: backbone tokens, the memory as explicit state, and its SavedModel round trip."""

from pathlib import Path

import numpy as np
import pytest

from mtv.errors import ConfigError, ExportError
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


def test_the_memory_benchmark_streams_with_constant_state():
    from benchmarks.streaming_memory import stream

    record = stream(minutes=0.05, memory_size=4)  # 3 s: three 1-s clips of 5 tokens
    assert record["clips"] == 3 and record["memory_tokens"] == 4 and record["tokens_absorbed"] == 15.0
    assert record["peak_rss_mb"] > 0


# ------------------------------------------------------------------ training the head, saving, exporting
EMBEDDED = Path(__file__).resolve().parents[1] / "mtv" / "embedded" / "camera-motion"


def test_a_trained_head_beats_an_untrained_one_on_heldout_streams(videos_dir):
    """Fixed seeds, tiny: 39 training streams of 2 clips; 26 held-out streams from footage never trained on."""
    import keras

    import mtv
    from mtv.long import train_streaming as ts

    backbone = mtv.load(str(EMBEDDED)).backbone  # the trained camera-motion MTV, frozen
    keras.utils.set_random_seed(0)
    model = StreamingClassifier(backbone, num_classes=13, memory_size=8)
    frames, size = model.input_shapes["rgb"][:2]
    train_x, train_y = ts.stream_set(videos_dir, split="train", count=39, clips_per_stream=2, num_frames=frames,
                                     size=size, seed=0)
    test_x, test_y = ts.stream_set(videos_dir, split="heldout", count=26, clips_per_stream=2, num_frames=frames,
                                   size=size, seed=1)
    test_states = ts.memory_states(model, ts.clip_tokens(model, test_x))
    untrained = ts.accuracy_per_clip(ts.readout_logits(model, *test_states), test_y)
    result = ts.train_streaming_head(model, ts.clip_tokens(model, train_x), train_y, epochs=30, batch_size=16,
                                     learning_rate=1e-2, seed=0)
    trained = ts.accuracy_per_clip(ts.readout_logits(model, *test_states), test_y)
    # Chance is 1/13; the bound is what separates a head that learnt from one that did not.
    assert max(untrained) < 0.35 <= min(trained), (untrained, trained)
    assert result.losses[-1] < 0.5 * result.initial_loss, (result.initial_loss, result.losses)
    assert result.settings["loss_on"] == "every" and result.settings["streams"] == 39


def test_the_loss_is_taken_after_every_clip_or_the_last(streaming):
    from mtv.long.train_streaming import _states_for_loss, train_streaming_head

    memory, weights = np.zeros((3, 4, 6, 64), np.float32), np.ones((3, 4, 6), np.float32)
    memory[:, -1] = 1.0
    labels = np.array([0, 1, 2])
    m, w, y = _states_for_loss(memory, weights, labels, "every")
    assert m.shape == (12, 6, 64) and w.shape == (12, 6) and list(y) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    m, w, y = _states_for_loss(memory, weights, labels, "last")
    assert m.shape == (3, 6, 64) and np.all(m == 1.0) and list(y) == [0, 1, 2]
    with pytest.raises(ConfigError, match="loss_on must be one of"):
        train_streaming_head(streaming, np.zeros((3, 2, 5, 64), np.float32), labels, loss_on="first")


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    """The tiny classifier saved as a preset, and a streaming head on its backbone trained a little and saved."""
    from mtv.io.presets import save_preset
    from mtv.long import train_streaming as ts
    from mtv.models.builder import build_model

    tmp_path = tmp_path_factory.mktemp("streaming_head")
    classifier = build_model(str(TINY), seed=0)
    preset = save_preset(classifier, tmp_path / "preset")
    model = StreamingClassifier(classifier.backbone, num_classes=5, memory_size=6)
    tokens = ts.clip_tokens(model, _clips(3, seed=3))
    ts.train_streaming_head(model, tokens, np.array([1, 3]), epochs=3, batch_size=2, seed=0)
    assert np.any(np.asarray(model.readout.query) != 0)  # trained: the zero-initialised query has moved
    head = ts.save_streaming_head(model, tmp_path / "head", backbone_handle=str(preset),
                                  class_names=["a", "b", "c", "d", "e"], training={"epochs": 3})
    return preset, head, model


def test_mtv_export_streaming_writes_the_step_with_explicit_memory(trained_head, tmp_path):
    """`mtv export --streaming`: the SavedModel's `step`, clip by clip, is the Keras model's per-clip output."""
    import tensorflow as tf

    from mtv.cli import run

    preset, head, model = trained_head
    out = tmp_path / "streaming_savedmodel"
    assert run(["export", str(preset), str(out), f"--streaming={head}"]) == 0
    step = tf.saved_model.load(str(out)).signatures[STEP_SIGNATURE]
    assert set(step.structured_input_signature[1]) == {"memory", "memory_weights", "frames"}
    assert set(step.structured_outputs) == {"memory", "memory_weights", "logits", "probabilities"}
    stream = _clips(3, seed=4)
    want = np.asarray(model(stream))  # the Keras model's logits after each clip, [B, S, C]
    memory, weights = (np.asarray(a) for a in model.empty_state(2))
    want_memory, want_weights = memory, weights
    for s in range(3):
        out_s = step(memory=tf.constant(memory), memory_weights=tf.constant(weights), frames=tf.constant(stream[:, s]))
        np.testing.assert_allclose(out_s["logits"].numpy(), want[:, s], atol=1e-5)
        want_memory, want_weights, _ = model.step(want_memory, want_weights, stream[:, s])
        np.testing.assert_allclose(out_s["memory"].numpy(), np.asarray(want_memory), atol=1e-5)
        np.testing.assert_allclose(out_s["probabilities"].numpy().sum(-1), [1, 1], rtol=1e-5)
        memory, weights = out_s["memory"].numpy(), out_s["memory_weights"].numpy()
    np.testing.assert_allclose(weights.sum(1), [15, 15])  # 5 tokens per clip, each counted once
    # The state is really carried by the caller: the last clip on an empty memory predicts something else.
    fresh = step(memory=tf.zeros_like(memory), memory_weights=tf.zeros_like(weights), frames=tf.constant(stream[:, 2]))
    assert np.abs(fresh["logits"].numpy() - want[:, 2]).max() > 1e-3
    assert run(["export", str(preset), str(out), f"--streaming={head}"]) == 1  # never over an existing export
    with pytest.raises(ExportError, match="exists and is not an empty directory"):
        export_streaming(model, out)
    assert run(["export", str(preset), str(tmp_path / "x"), f"--streaming={head}", "--xla"]) == 1
    assert not (tmp_path / "x").exists()


def test_a_saved_head_round_trips_and_refuses_another_backbone(trained_head):
    from mtv.errors import CheckpointError
    from mtv.long.train_streaming import load_streaming_head, read_streaming_head, save_streaming_head
    from mtv.models.builder import build_model

    preset, head, model = trained_head
    meta = read_streaming_head(head)
    assert meta["memory_size"] == 6 and meta["class_names"] == ["a", "b", "c", "d", "e"]
    loaded = load_streaming_head(head, build_model(str(TINY), seed=0))
    stream = _clips(2, seed=5)
    np.testing.assert_allclose(np.asarray(loaded(stream)), np.asarray(model(stream)), atol=1e-6)
    with pytest.raises(ConfigError, match="was trained on another backbone"):
        load_streaming_head(head, build_model(str(TINY), seed=1))
    with pytest.raises(CheckpointError, match="is not a streaming head directory"):
        load_streaming_head(preset, model.backbone)
    with pytest.raises(ExportError, match="exists and is not an empty directory"):
        save_streaming_head(model, head)


def test_bad_streams_and_memory_sizes_are_named(streaming):
    from mtv.errors import ShapeError
    from mtv.long.train_streaming import clip_tokens

    wrong = np.zeros((2, 3, 8, 16, 16, 3), np.float32)  # 16x16 frames for a 32x32 model
    with pytest.raises(ShapeError, match=r"must be \[B, S, 8, 32, 32, 3\].*got shape \(2, 3, 8, 16, 16, 3\)"):
        streaming(wrong)
    with pytest.raises(ShapeError, match=r"streams must be \[M, S, 8, 32, 32, 3\].*\(2, 3, 8, 16, 16, 3\)"):
        clip_tokens(streaming, wrong)
    with pytest.raises(ShapeError, match=r"must be \[B, S, 8, 32, 32, 3\]"):
        streaming(np.zeros((2, 8, 32, 32, 3), np.float32))  # one clip, no stream axis
    for k in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="memory_size must be a positive integer"):
            StreamingClassifier(streaming.backbone, num_classes=5, memory_size=k)
