"""Fusion (weights, probabilities, alignment) and the validation weight search."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mtv.epic import ensemble
from mtv.epic.results import validate
from mtv.errors import ResultsError


def _softmax(x):
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _pair(n=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"v{i}" for i in range(n)]
    a = validate(ids, {"logits": rng.normal(size=(n, classes))}, source="a.npz")
    b = validate(ids, {"logits": rng.normal(size=(n, classes))}, source="b.npz")
    return a, b


def test_weighted_logit_fusion():
    a, b = _pair()
    fused = ensemble.fuse([a, b], [1, 3])
    np.testing.assert_allclose(fused.outputs["logits"], 0.25 * a.outputs["logits"] + 0.75 * b.outputs["logits"])
    assert fused.score_kind == "logits" and fused.ids.tolist() == a.ids.tolist()
    np.testing.assert_allclose(ensemble.fuse([a, b], [0.25, 0.75]).outputs["logits"], fused.outputs["logits"])
    mean = ensemble.fuse([a, b]).outputs["logits"]
    np.testing.assert_allclose(mean, (a.outputs["logits"] + b.outputs["logits"]) / 2)


def test_probability_fusion():
    a, b = _pair()
    fused = ensemble.fuse([a, b], [2, 1], fuse="probabilities")
    want = 2 / 3 * _softmax(a.outputs["logits"]) + 1 / 3 * _softmax(b.outputs["logits"])
    np.testing.assert_allclose(fused.outputs["logits"], want)
    assert fused.score_kind == "probabilities"
    # Inputs that already hold probabilities are averaged as they are.
    pa = validate(a.ids, {"logits": _softmax(a.outputs["logits"])}, "probabilities")
    np.testing.assert_allclose(ensemble.fuse([pa, b], [2, 1], fuse="probabilities").outputs["logits"], want)


def test_probabilities_enter_logit_fusion_as_log_probabilities():
    a, b = _pair()
    pa = validate(a.ids, {"logits": _softmax(a.outputs["logits"])}, "probabilities")
    fused = ensemble.fuse([pa, b])
    want = (np.log(_softmax(a.outputs["logits"])) + b.outputs["logits"]) / 2
    np.testing.assert_allclose(fused.outputs["logits"], want)


def test_alignment_with_shuffled_order():
    a, b = _pair(n=8)
    perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
    shuffled = b.take(perm)
    assert shuffled.ids.tolist() != b.ids.tolist()
    aligned = ensemble.align([a, shuffled])
    assert aligned[1].ids.tolist() == a.ids.tolist()
    np.testing.assert_array_equal(aligned[1].outputs["logits"], b.outputs["logits"])
    np.testing.assert_allclose(
        ensemble.fuse([a, shuffled], [1, 2]).outputs["logits"], ensemble.fuse([a, b], [1, 2]).outputs["logits"]
    )
    # The first file sets the order.
    assert ensemble.fuse([shuffled, a]).ids.tolist() == shuffled.ids.tolist()


def test_mismatched_ids_are_refused():
    a, b = _pair(n=8)
    c = validate([*a.ids[:6].tolist(), "x1", "x2"], {"logits": a.outputs["logits"]}, source="c.npz")
    with pytest.raises(ResultsError) as e:
        ensemble.fuse([a, b, c])
    msg = str(e.value)
    assert "a.npz lacks 'x1', 'x2'" in msg and "b.npz lacks 'x1', 'x2'" in msg
    assert "c.npz lacks 'v6', 'v7'" in msg
    many = validate([f"w{i}" for i in range(8)], {"logits": a.outputs["logits"]}, source="w.npz")
    with pytest.raises(ResultsError, match=r"\(8 in all\)"):
        ensemble.align([a, many])


def test_heads_and_weights_must_fit():
    a, b = _pair()
    other = validate(a.ids, {"logits": np.zeros((6, 5))}, source="five.npz")
    with pytest.raises(ResultsError, match="five.npz has heads"):
        ensemble.fuse([a, other])
    with pytest.raises(ResultsError, match="2 weights for 3"):
        ensemble.fuse([a, b, b], [1, 2])
    with pytest.raises(ResultsError, match=">= 0"):
        ensemble.fuse([a, b], [1, -1])
    with pytest.raises(ResultsError, match="sum to 0"):
        ensemble.fuse([a, b], [0, 0])
    with pytest.raises(ResultsError, match="fuse mode"):
        ensemble.fuse([a, b], fuse="median")


def _threshold_models(truth, classes, rng):
    """Two models whose fusion w*A + (1-w)*B is right everywhere exactly when 0.25 < w < 0.35.

    Half the examples: A prefers the truth by 3, B prefers a decoy by 1 -> right iff w > 0.25.
    Other half: A prefers a decoy by 0.65, B the truth by 0.35 -> right iff w < 0.35.
    """
    n = len(truth)
    a = np.full((n, classes), -10.0)
    b = np.full((n, classes), -10.0)
    for i, t in enumerate(truth):
        decoy = (t + 1 + rng.integers(classes - 1)) % classes
        if i % 2 == 0:
            a[i, t], b[i, decoy] = 3.0, 1.0
            a[i, decoy] = b[i, t] = 0.0
        else:
            a[i, decoy], b[i, t] = 0.65, 0.35
            a[i, t] = b[i, decoy] = 0.0
    return a, b


def test_search_with_labels_finds_the_known_best_weights():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=40)
    a, b = _threshold_models(labels, 5, rng)
    ids = [f"s{i}" for i in range(40)]
    ra, rb = validate(ids, {"logits": a}), validate(ids, {"logits": b})
    weights, score = ensemble.search_weights([ra, rb], labels=labels)
    np.testing.assert_allclose(weights, [0.3, 0.7])
    assert score == 100.0
    weights, score = ensemble.search_weights([ra, rb], labels=labels, method="coordinate")
    assert score == 100.0 and 0.25 < weights[0] < 0.35 and weights.sum() == pytest.approx(1)
    # A coarse grid cannot reach the window: the best is then 50 %.
    _, coarse = ensemble.search_weights([ra, rb], labels=labels, grid=2)
    assert coarse == 50.0


def test_search_on_epic_validation(epic_dir):
    with open(epic_dir / "EPIC_100_validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(1)
    verb_a, verb_b = _threshold_models([int(r["verb_class"]) for r in rows], 97, rng)
    noun_a, noun_b = _threshold_models([int(r["noun_class"]) for r in rows], 300, rng)
    ids = [r["narration_id"] for r in rows]
    ra = validate(ids, {"verb": verb_a, "noun": noun_a}, source="a.npz")
    rb = validate(ids, {"verb": verb_b, "noun": noun_b}, source="b.npz")
    weights, score = ensemble.search_weights([ra, rb], epic_dir / "EPIC_100_validation.csv")
    np.testing.assert_allclose(weights, [0.3, 0.7])
    assert score == 100.0
    weights, score = ensemble.search_weights(
        [ra, rb.take(rng.permutation(len(rb)))],
        epic_dir / "EPIC_100_validation.csv",
        metric="all_verb_accuracy_at_1",
        grid=[0.3, 0.7],  # candidates (.5, .5), (.3, .7), (.7, .3)
    )
    np.testing.assert_allclose(weights, [0.3, 0.7])
    with pytest.raises(ResultsError, match="unknown metric"):
        ensemble.search_weights([ra, rb], epic_dir / "EPIC_100_validation.csv", metric="top1")


def test_search_arguments():
    a, b = _pair()
    with pytest.raises(ResultsError, match="exactly one"):
        ensemble.search_weights([a, b])
    with pytest.raises(ResultsError, match="method"):
        ensemble.search_weights([a, b], labels=np.zeros(6, int), method="random")
    with pytest.raises(ResultsError, match="labels must be 6"):
        ensemble.search_weights([a, b], labels=np.zeros(5, int))
    weights, _ = ensemble.search_weights([a, b], labels=np.zeros(6, int), grid=[0.0, 1.0, 2.0])
    assert weights.sum() == pytest.approx(1.0)
