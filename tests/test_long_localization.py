"""The UnLoc-style localizer: target assignment, loss, decoding, a few training steps and the config's model."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from mtv.errors import DataError, ShapeError
from mtv.eval.localization_metrics import mean_average_precision
from mtv.long.features import step_features
from mtv.long.localization import (
    UnLocHead,
    build_localization_model,
    build_targets,
    decode_segments,
    distance_iou,
    localization_loss,
    sigmoid_focal_loss,
    step_geometry,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "localization" / "camera_motion_localization_tiny.py"
CLASSES = ("a", "b")


def test_targets_follow_the_assignment_rule():
    # 8 steps of 1 s, 2 levels. Level 0: centres 0.5..7.5, length 1, range [0, 4); level 1: centres 1, 3, 5,
    # 7, length 2, range [2, inf). Segment b = [1, 6]:
    #   level 0: centres inside 1.5..5.5; max(t - 1, 6 - t) = 4.5, 3.5, 2.5, 3.5, 4.5 -> steps 2, 3, 4 (< 4)
    #   level 1: centres inside 1, 3, 5; max distance / 2 = 2.5, 1.5, 2.0 -> centres 1 and 5 (>= 2)
    # Segment a = [3, 4] (shorter, overlapping): level 0 centre 3.5, far 0.5 -> step 3; level 1 centre 3:
    #   far 1 / 2 = 0.5 < 2 -> none. Step 3 is then multi-hot {a, b} with a's distances (the shorter one).
    t = build_targets([(3.0, 4.0, "a"), (1.0, 6.0, "b")], num_steps=8, step_seconds=1.0, num_levels=2,
                      class_names=CLASSES)
    np.testing.assert_array_equal(t["positive"], [0, 0, 1, 1, 1, 0, 0, 0] + [1, 0, 1, 0])
    np.testing.assert_array_equal(t["classes"][3], [1, 1])
    np.testing.assert_array_equal(t["classes"][[2, 4, 8, 10]], [[0, 1]] * 4)
    # Distances in level steps: level 0 (t - 1, 6 - t) at 2.5 and 4.5, a's (0.5, 0.5) at 3.5;
    # level 1 ((1 - 1) / 2, (6 - 1) / 2) and ((5 - 1) / 2, (6 - 5) / 2).
    np.testing.assert_allclose(t["distances"][[2, 3, 4, 8, 10]],
                               [[1.5, 3.5], [0.5, 0.5], [3.5, 1.5], [0.0, 2.5], [2.0, 0.5]])
    np.testing.assert_array_equal(t["valid"], np.ones(12))
    times, lengths, levels = step_geometry(8, 1.0, 2)
    np.testing.assert_allclose(times[8:], [1, 3, 5, 7])
    np.testing.assert_allclose(lengths, [1] * 8 + [2] * 4)


@pytest.mark.parametrize("segment,message", [
    ((2.0, 2.0, "a"), "start 2.0 >= end 2.0"),
    ((5.0, 9.0, "a"), r"lies outside the sequence \[0, 8\] s"),
    ((1.0, 2.0, "zoom"), "unknown label 'zoom'; known labels: a, b"),
])
def test_bad_segments_are_refused_by_name(segment, message):
    with pytest.raises(DataError, match=message):
        build_targets([segment], num_steps=8, step_seconds=1.0, num_levels=2, class_names=CLASSES)


def test_loss_terms_by_hand():
    # Label 1, logit 0: p = 1/2, CE = log 2, focal = alpha (1 - p)^2 CE = 0.25 * 0.25 * log 2.
    np.testing.assert_allclose(float(sigmoid_focal_loss(np.float32(1.0), np.float32(0.0))), 0.0625 * math.log(2),
                               rtol=1e-6)
    # Predicted (1, 1) vs target (1, 3) from the same centre: overlap 1 + 1, union 1 + 3 -> tIoU 1/2.
    np.testing.assert_allclose(float(distance_iou(np.float32([1, 1]), np.float32([1, 3]))), 0.5)
    targets = {"classes": np.float32([[[1.0]], [[0.0]]]), "positive": np.float32([[1.0], [0.0]]),
               "valid": np.float32([[1.0], [1.0]]), "distances": np.float32([[[1, 3]], [[0, 0]]])}
    outputs = {"logits": np.float32([[[0.0]], [[0.0]]]), "distances": np.float32([[[1, 1]], [[5, 5]]])}
    parts = localization_loss(targets, outputs)
    # One positive step: focal of the positive (0.0625 log 2) + the negative (0.75 * 0.25 * log 2), over 1;
    # regression only on the positive step: 1 - 1/2.
    np.testing.assert_allclose(float(parts["classification"]), (0.0625 + 0.1875) * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(parts["regression"]), 0.5, rtol=1e-6)


def test_perfect_head_outputs_decode_to_the_ground_truth():
    segments = [(0.0, 1.5, "a"), (1.5, 4.0, "b")]
    geometry = dict(num_steps=16, step_seconds=0.25, num_levels=3)
    t = build_targets(segments, class_names=CLASSES, **geometry)
    logits = np.where(t["classes"] > 0, 8.0, -8.0)
    for method in ("nms", "soft_nms"):
        found = decode_segments(logits, t["distances"], class_names=CLASSES, method=method, **geometry)
        assert [(s, e, c) for s, e, c, _ in found[:2]] == [(0.0, 1.5, "a"), (1.5, 4.0, "b")]
        assert mean_average_precision({"v": segments}, {"v": found})["mAP"] == 1.0
    with pytest.raises(ShapeError, match=r"expected logits \[28, C\]"):
        decode_segments(logits[:-1], t["distances"][:-1], **geometry)


def test_a_few_gradient_steps_reduce_the_loss():
    # Features: one-hot of the class at each 0.25 s step (+ noise), a bump at boundaries; 2 layouts.
    rng = np.random.default_rng(0)
    layouts = [[(0.0, 2.0, 2), (2.0, 4.0, 1)], [(0.0, 1.0, 1), (1.0, 2.5, 2), (2.5, 4.0, 0)]]
    features, targets = [], []
    for i in range(4):
        segments = layouts[i % 2]
        x = np.zeros((16, 3), np.float32)
        for start, end, label in segments:
            x[int(start * 4):int(end * 4), label] = 1.0
        features.append(x + rng.normal(0, 0.1, x.shape))
        targets.append(build_targets(segments, num_steps=16, step_seconds=0.25, num_levels=2, num_classes=3))
    x = np.stack(features).astype(np.float32)
    y = {k: np.stack([t[k] for t in targets]) for k in targets[0]}
    keras.utils.set_random_seed(0)
    head = UnLocHead(3, width=16, num_levels=2, num_conv_layers=1)
    head.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = [float(head.train_on_batch(x, y)) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_config_builds_a_localizer_over_mtv_step_features(tmp_path):
    model = build_localization_model(str(CONFIG), seed=0)
    windows = np.random.default_rng(0).uniform(-1, 1, (1, 2, 8, 32, 32, 3)).astype(np.float32)
    out = model(windows)
    # 2 windows x 4 steps = 8 steps of 8 / 8 fps / 4 = 0.25 s; 3 levels: 8 + 4 + 2 pyramid steps, 13 classes.
    assert model.step_seconds(8.0) == 0.25
    assert tuple(out["logits"].shape) == (1, 14, 13) and tuple(out["distances"].shape) == (1, 14, 2)
    assert float(np.min(out["distances"])) >= 0.0
    features = np.asarray(model.features(windows))
    np.testing.assert_allclose(features[:, 4:], np.asarray(step_features(model.backbone, windows[:, 1])), atol=1e-5)
    with pytest.raises(ShapeError, match="too few for 3 pyramid levels"):
        model.head(np.zeros((1, 3, 64), np.float32))
    model.save(tmp_path / "localizer.keras")
    again = keras.saving.load_model(tmp_path / "localizer.keras")
    np.testing.assert_allclose(np.asarray(again(windows)["logits"]), np.asarray(out["logits"]), atol=1e-6)
