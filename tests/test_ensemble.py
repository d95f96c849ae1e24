"""Fusion (weights, per-head weights, probabilities, alignment), .npz/.pkl scoring parity, and the weight
search (coordinate ascent, held-out folds)."""

from __future__ import annotations

import csv
import math
import pickle
import time

import numpy as np
import pytest

from mtv.epic import ensemble, search
from mtv.epic import scoring as epic
from mtv.epic.results import Results, raw_scores, read_results, save, validate
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


def test_per_head_weights():
    rng = np.random.default_rng(3)
    ids = [f"P01_01_{i}" for i in range(5)]
    a = validate(ids, {"verb": rng.normal(size=(5, 97)), "noun": rng.normal(size=(5, 300))}, source="a.npz")
    b = validate(ids, {"verb": rng.normal(size=(5, 97)), "noun": rng.normal(size=(5, 300))}, source="b.npz")
    fused = ensemble.fuse([a, b], {"verb": [1, 3], "noun": [1, 0]})
    np.testing.assert_allclose(fused.outputs["verb"], 0.25 * a.outputs["verb"] + 0.75 * b.outputs["verb"])
    np.testing.assert_array_equal(fused.outputs["noun"], a.outputs["noun"])
    with pytest.raises(ResultsError, match=r"missing \['noun'\]"):
        ensemble.fuse([a, b], {"verb": [1, 3]})
    with pytest.raises(ResultsError, match=r"unknown \['action'\]"):
        ensemble.fuse([a, b], {"verb": [1, 3], "noun": [1, 1], "action": [1, 1]})
    with pytest.raises(ResultsError, match="noun weights sum to 0"):
        ensemble.fuse([a, b], {"verb": [1, 3], "noun": [0, 0]})


# ----------------------------------------------------------------------------- .npz / .pkl parity


def _subset_csv(epic_dir, tmp_path, n, seed):
    """The first columns of n real validation rows, as a CSV of their own (compute_metrics needs all ids)."""
    with open(epic_dir / "EPIC_100_validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [rows[i] for i in np.random.default_rng(seed).choice(len(rows), size=n, replace=False)]
    path = tmp_path / f"validation_{n}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def _official_actions(verb_row, noun_row, top_n=100):
    """Action ids as the official utils/scoring.py ranks them: softmax over the top-n raw scores, product."""
    verbs = sorted(range(len(verb_row)), key=lambda c: -verb_row[c])[:top_n]
    nouns = sorted(range(len(noun_row)), key=lambda c: -noun_row[c])[:top_n]
    zv, zn = sum(math.exp(verb_row[v]) for v in verbs), sum(math.exp(noun_row[n]) for n in nouns)
    pairs = [(math.exp(verb_row[v]) / zv * math.exp(noun_row[n]) / zn, v * 1000 + n) for v in verbs for n in nouns]
    return [a for _, a in sorted(pairs, reverse=True)[:top_n]]


@pytest.mark.parametrize("mode", ensemble.FUSE_MODES)
def test_fused_npz_and_pkl_score_identically(tmp_path, epic_dir, mode):
    """Item 8: probability and logit fusions rank actions alike as .npz, as .pkl, and for the official scorer."""
    csv_path, rows = _subset_csv(epic_dir, tmp_path, 40, seed=8)
    rng = np.random.default_rng(8)
    ids = [r["narration_id"] for r in rows]
    models = []
    for _ in range(3):
        verb, noun = rng.normal(size=(40, 97)) * 2, rng.normal(size=(40, 300)) * 2
        for i, r in enumerate(rows):  # near the truth, so that top-5 hits happen and their order matters
            verb[i, int(r["verb_class"])] += rng.uniform(0, 4)
            noun[i, int(r["noun_class"])] += rng.uniform(0, 5)
        models.append(validate(ids, {"verb": verb.astype(np.float32), "noun": noun.astype(np.float32)}))
    fused = ensemble.fuse(models, {"verb": [1, 2, 3], "noun": [3, 1, 1]}, fuse=mode)
    npz, pkl = save(tmp_path / "fused.npz", fused), save(tmp_path / "fused.pkl", fused)
    from_npz, from_pkl = read_results(npz), read_results(pkl, allow_pickle=True)
    metrics = epic.compute_metrics(from_npz, csv_path)
    assert epic.compute_metrics(from_pkl, csv_path) == metrics
    assert 0 < metrics["all_action_accuracy_at_1"] < metrics["all_action_accuracy_at_5"] < 100  # not vacuous
    # What the official scorer makes of the pickle's numbers is what we make of the .npz.
    with open(pkl, "rb") as f:
        official = pickle.load(f)
    verbs, nouns, _ = epic.action_scores(raw_scores(from_npz, "verb"), raw_scores(from_npz, "noun"))
    for i in range(0, 40, 4):
        ours = epic.action_id(verbs[i], nouns[i]).tolist()
        assert ours == _official_actions(official["verb_output"][i].tolist(), official["noun_output"][i].tolist())


# ----------------------------------------------------------------------------- weight search


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


def test_search_with_labels_finds_the_threshold_window():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=40)
    a, b = _threshold_models(labels, 5, rng)
    ids = [f"s{i}" for i in range(40)]
    ra, rb = validate(ids, {"logits": a}), validate(ids, {"logits": b})
    found = search.search_weights([ra, rb], labels=labels)
    np.testing.assert_allclose(found.weights["logits"], [0.3, 0.7])
    assert found.score == 100.0 and found.metric == "accuracy_at_1"
    # Shares 0, 1/2, 1 cannot reach the window: the best is then 50 %.
    assert search.search_weights([ra, rb], labels=labels, grid=2).score == 50.0


def test_search_on_epic_validation_needs_separate_verb_and_noun_steps(epic_dir, tmp_path):
    """Action top-1 needs verb AND noun right: fixing verbs alone does not move it, yet must be taken."""
    csv_path, rows = _subset_csv(epic_dir, tmp_path, 300, seed=1)
    rng = np.random.default_rng(1)
    verb_a, verb_b = _threshold_models([int(r["verb_class"]) for r in rows], 97, rng)
    noun_a, noun_b = _threshold_models([int(r["noun_class"]) for r in rows], 300, rng)
    ids = [r["narration_id"] for r in rows]
    ra = validate(ids, {"verb": verb_a, "noun": noun_a}, source="a.npz")
    rb = validate(ids, {"verb": verb_b, "noun": noun_b}, source="b.npz")
    found = search.search_weights([ra, rb.take(rng.permutation(len(rb)))], csv_path)  # aligned by id
    assert found.score == 100.0
    for head in ("verb", "noun"):
        np.testing.assert_allclose(found.weights[head], [0.3, 0.7])
    assert epic.compute_metrics(ensemble.fuse([ra, rb], found.weights), csv_path)["all_action_accuracy_at_1"] == 100
    with pytest.raises(ResultsError, match="unknown metric 'top1'; available: .*all_action_accuracy_at_5"):
        search.search_weights([ra, rb], csv_path, metric="top1")


def _planted(rows, models, experts, rng):
    """`models` results: model experts[head] knows that head (truth 1.0, others below 0.9), every other model
    is noise up to 3 on it. Only separate verb and noun weights can get every action right."""
    n, out = len(rows), []
    truth = {"verb": [int(r["verb_class"]) for r in rows], "noun": [int(r["noun_class"]) for r in rows]}
    for m in range(models):
        scores = {}
        for head, classes in (("verb", 97), ("noun", 300)):
            if m == experts[head]:
                x = rng.uniform(0, 0.9, size=(n, classes))
                x[np.arange(n), truth[head]] = 1.0
            else:
                x = rng.uniform(0, 3, size=(n, classes))
            scores[head] = x.astype(np.float32)
        out.append(validate([r["narration_id"] for r in rows], scores, source=f"model{m}.npz"))
    return out


def test_coordinate_ascent_with_ten_models_finds_the_planted_weighting(epic_dir, tmp_path):
    csv_path, rows = _subset_csv(epic_dir, tmp_path, 600, seed=2)
    models, grid = 10, 10
    results = _planted(rows, models, {"verb": 2, "noun": 7}, np.random.default_rng(2))
    equal = epic.compute_metrics(ensemble.fuse(results), csv_path)["all_action_accuracy_at_1"]
    start = time.perf_counter()
    found = search.search_weights(results, csv_path, grid=grid)
    seconds = time.perf_counter() - start
    assert found.score == 100.0 and equal < 10.0
    assert int(np.argmax(found.weights["verb"])) == 2 and int(np.argmax(found.weights["noun"])) == 7
    # Cost linear in the models: equal + each model alone + per pass heads x models x (grid + 1) candidates.
    assert found.rounds <= 3
    assert found.evaluations <= 1 + models + found.rounds * 2 * models * (grid + 1)
    assert seconds < 30  # ~1 s here; a grid on the simplex would need C(19, 9) = 92,378 points per head
    shared = search.search_weights(results, csv_path, grid=grid, per_head=False)
    assert shared.score < 50.0  # one vector for both heads cannot serve both experts


def _generic_models(rng, labels, models, classes):
    out = []
    for m in range(models):
        x = rng.normal(size=(len(labels), classes)) * 2
        x[np.arange(len(labels)), labels] += 0.5 + 0.1 * m
        out.append(validate([f"s{i}" for i in range(len(labels))], {"logits": x}, source=f"m{m}.npz"))
    return out


def test_cross_validation_reports_only_held_out_numbers():
    rng = np.random.default_rng(4)
    n, classes, folds = 240, 8, 4
    labels = rng.integers(0, classes, size=n)
    results = _generic_models(rng, labels, 8, classes)
    parts = search.fold_rows([f"s{i}" for i in range(n)], folds, seed=0, by_video=False)
    # A "leaky" model, perfect on part 0 and wrong elsewhere: a search that sees part 0 loves it.
    leak = rng.normal(size=(n, classes))
    leak[np.arange(n), labels] = -5.0
    leak[parts[0], labels[parts[0]]] = 10.0
    results.append(validate(results[0].ids, {"logits": leak}, source="leak.npz"))
    cv = search.cross_validate(results, labels=labels, folds=folds, seed=0)
    assert [f.rows.tolist() for f in cv.folds] == [p.tolist() for p in parts]
    for fold in cv.folds:
        rest = np.setdiff1d(np.arange(n), fold.rows)
        # The weights scored on this part were searched without it ...
        alone = search.search_weights([r.take(rest) for r in results], labels=labels[rest])
        for head in alone.weights:
            np.testing.assert_array_equal(fold.search.weights[head], alone.weights[head])
        # ... and the part's numbers are those weights' fusion of this part only.
        part = ensemble.fuse([r.take(fold.rows) for r in results], fold.search.weights)
        np.testing.assert_array_equal(cv.held_out.outputs["logits"][fold.rows], part.outputs["logits"])
        hits = np.argmax(part.outputs["logits"], axis=1) == labels[fold.rows]
        assert fold.held_out["accuracy_at_1"] == pytest.approx(100 * hits.mean())
    pooled = np.argmax(cv.held_out.outputs["logits"], axis=1) == labels
    assert cv.held_out_metrics["accuracy_at_1"] == pytest.approx(100 * pooled.mean())
    # Part 0: fitted to it the leak scores 100 %, held out it gets no weight and no credit.
    fitted = search.search_weights([r.take(parts[0]) for r in results], labels=labels[parts[0]])
    assert fitted.score == 100.0
    assert cv.folds[0].search.weights["logits"][-1] == 0.0 and cv.folds[0].held_out["accuracy_at_1"] < 75.0
    assert cv.final.weights["logits"].sum() == pytest.approx(1.0)


def test_epic_folds_keep_videos_together_and_val_metrics_match_the_scorer(epic_dir, tmp_path):
    csv_path, rows = _subset_csv(epic_dir, tmp_path, 400, seed=5)
    results = _planted(rows, 3, {"verb": 0, "noun": 1}, np.random.default_rng(5))
    cv = search.cross_validate(results, csv_path, folds=3, grid=4, fuse="probabilities")
    videos = [{results[0].ids[i].rsplit("_", 1)[0] for i in f.rows} for f in cv.folds]
    assert not (videos[0] & videos[1]) and not (videos[0] & videos[2]) and not (videos[1] & videos[2])
    assert sorted(np.concatenate([f.rows for f in cv.folds]).tolist()) == list(range(len(rows)))
    sizes = [len(f.rows) for f in cv.folds]
    assert max(sizes) - min(sizes) < 0.2 * len(rows)
    assert isinstance(cv.held_out, Results) and cv.held_out.score_kind == "probabilities"
    assert epic.compute_metrics(cv.held_out, csv_path) == cv.held_out_metrics
    assert epic.compute_metrics(ensemble.fuse(results, fuse="probabilities"), csv_path) == cv.equal_metrics
    assert cv.gain == cv.held_out_metrics["all_action_accuracy_at_1"] - cv.equal_metrics["all_action_accuracy_at_1"]


def test_search_arguments():
    a, b = _pair()
    with pytest.raises(ResultsError, match="exactly one"):
        search.search_weights([a, b])
    with pytest.raises(ResultsError, match="labels must be 6"):
        search.search_weights([a, b], labels=np.zeros(5, int))
    with pytest.raises(ResultsError, match="grid is 0"):
        search.search_weights([a, b], labels=np.zeros(6, int), grid=0)
    with pytest.raises(ResultsError, match="folds is 1"):
        search.cross_validate([a, b], labels=np.zeros(6, int), folds=1)
    with pytest.raises(ResultsError, match="7 folds need at least 7 ids; the results have 6"):
        search.cross_validate([a, b], labels=np.zeros(6, int), folds=7)
    with pytest.raises(ResultsError, match="fuse mode"):
        search.search_weights([a, b], labels=np.zeros(6, int), fuse="median")
    found = search.search_weights([a], labels=np.zeros(6, int))
    assert found.weights["logits"].tolist() == [1.0] and found.rounds == 0
