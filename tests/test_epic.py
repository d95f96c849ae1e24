"""Epic-Kitchens-100 scoring on the real validation CSV, action scores, and the submission zip."""

from __future__ import annotations

import csv
import json
import math
import zipfile

import numpy as np
import pytest

from mtv.epic import scoring as epic
from mtv.epic.results import raw_scores, validate
from mtv.errors import ConfigError, DataError, ResultsError
from mtv.utils.numeric import top_k

# Top-3 raw scores the construction puts at ranks 1, 2, 3; every other class scores in [-5, 0).
# Action sums (verb rank, noun rank) -> 20 (1,1), 19.1 (1,2), 18.6 (2,1), 18.1 (1,3), 17.7 (2,2),
# 17.3 (3,1), 16.7 (2,3), 16.4 (3,2), 15.4 (3,3); any pair with a rank > 3 is at most 10.
VERB_TOP = (10.0, 8.6, 7.3)
NOUN_TOP = (10.0, 9.1, 8.1)
ACTION_RANK = {(1, 1): 1, (1, 2): 2, (2, 1): 3, (1, 3): 4, (2, 2): 5, (3, 1): 6, (2, 3): 7, (3, 2): 8, (3, 3): 9}
LOW = 99  # "true class not in the top 3": it gets a score below every other class


def _read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _first_column(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:]]


def _scores_with_ranks(rng, truth, ranks, top, classes):
    """Random scores in [-5, 0) where class truth[i] sits at rank ranks[i] (1..3) or last (LOW)."""
    n = len(truth)
    scores = rng.uniform(-5.0, 0.0, size=(n, classes))
    for i in range(n):
        others = [c for c in rng.permutation(classes)[:4].tolist() if c != truth[i]][:3]
        slot = ranks[i] - 1 if ranks[i] != LOW else None
        order = others[:]
        if slot is not None:
            order.insert(slot, truth[i])
        for rank, c in enumerate(order[:3]):
            scores[i, c] = top[rank]
        if slot is None:
            scores[i, truth[i]] = -10.0
    return scores


@pytest.fixture(scope="module")
def val_rows(epic_dir):
    return _read_rows(epic_dir / "EPIC_100_validation.csv")


@pytest.fixture(scope="module")
def constructed(val_rows):
    """Scores for all 9,668 validation segments with each true verb/noun at a chosen rank."""
    rng = np.random.default_rng(1234)
    n = len(val_rows)
    verb_truth = [int(r["verb_class"]) for r in val_rows]
    noun_truth = [int(r["noun_class"]) for r in val_rows]
    choices = [1, 1, 1, 2, 3, LOW]
    verb_rank = rng.choice(choices, size=n).tolist()
    noun_rank = rng.choice(choices, size=n).tolist()
    verb = _scores_with_ranks(rng, verb_truth, verb_rank, VERB_TOP, 97)
    noun = _scores_with_ranks(rng, noun_truth, noun_rank, NOUN_TOP, 300)
    perm = rng.permutation(n)  # results in a different order from the CSV: the join must be by id
    ids = [val_rows[i]["narration_id"] for i in perm]
    results = validate(ids, {"verb": verb[perm], "noun": noun[perm]})
    return results, verb_rank, noun_rank


def _expected_metrics(rows, verb_rank, noun_rank, tail_verbs, tail_nouns, unseen):
    """The metrics by hand: only the construction's ranks and the CSVs, in plain Python."""
    def pct(flags):
        flags = list(flags)
        return 100.0 * sum(flags) / len(flags)

    action_rank = [ACTION_RANK.get((v, c), LOW) for v, c in zip(verb_rank, noun_rank, strict=True)]
    idx = range(len(rows))
    tv = [i for i in idx if rows[i]["verb_class"] in tail_verbs]
    tn = [i for i in idx if rows[i]["noun_class"] in tail_nouns]
    ta = [i for i in idx if rows[i]["verb_class"] in tail_verbs or rows[i]["noun_class"] in tail_nouns]
    un = [i for i in idx if rows[i]["participant_id"] in unseen]
    return {
        "all_verb_accuracy_at_1": pct(r == 1 for r in verb_rank),
        "all_verb_accuracy_at_5": pct(r <= 3 for r in verb_rank),
        "all_noun_accuracy_at_1": pct(r == 1 for r in noun_rank),
        "all_noun_accuracy_at_5": pct(r <= 3 for r in noun_rank),
        "all_action_accuracy_at_1": pct(r == 1 for r in action_rank),
        "all_action_accuracy_at_5": pct(r <= 5 for r in action_rank),
        "tail_verb_accuracy_at_1": pct(verb_rank[i] == 1 for i in tv),
        "tail_noun_accuracy_at_1": pct(noun_rank[i] == 1 for i in tn),
        "tail_action_accuracy_at_1": pct(action_rank[i] == 1 for i in ta),
        "unseen_verb_accuracy_at_1": pct(verb_rank[i] == 1 for i in un),
        "unseen_noun_accuracy_at_1": pct(noun_rank[i] == 1 for i in un),
        "unseen_action_accuracy_at_1": pct(action_rank[i] == 1 for i in un),
    }


def _csvs(epic_dir):
    return {
        "tail_verb_classes_csv": epic_dir / "EPIC_100_tail_verbs.csv",
        "tail_noun_classes_csv": epic_dir / "EPIC_100_tail_nouns.csv",
        "unseen_participant_ids_csv": epic_dir / "EPIC_100_unseen_participant_ids_validation.csv",
    }


def test_action_id():
    assert epic.action_id(0, 351) == 351 and epic.action_id(1, 0) == 1000
    np.testing.assert_array_equal(epic.action_id(np.array([0, 1, 96]), np.array([0, 1, 299])), [0, 1001, 96299])


def test_action_scores_hand_checked():
    # verb softmax = [1/4, 3/4]; noun softmax = [1/8, 2/8, 5/8].
    verb = np.log([[1.0, 3.0]])
    noun = np.log([[1.0, 2.0, 5.0]])
    verbs, nouns, probs = epic.action_scores(verb, noun, top_n=3)
    assert verbs.tolist() == [[1, 1, 0]] and nouns.tolist() == [[2, 1, 2]]
    np.testing.assert_allclose(probs, [[15 / 32, 6 / 32, 5 / 32]])
    # top_n=2: the noun softmax only spans the top-2 nouns: [5/7, 2/7].
    verbs, nouns, probs = epic.action_scores(verb, noun, top_n=2)
    assert verbs.tolist() == [[1, 1]] and nouns.tolist() == [[2, 1]]
    np.testing.assert_allclose(probs, [[0.75 * 5 / 7, 0.75 * 2 / 7]])


def _literal_top_actions(verb_row, noun_row, top_n=100):
    """The official semantics in the most literal form: loops, Python sorting, math.exp."""
    verbs = sorted(range(len(verb_row)), key=lambda c: verb_row[c], reverse=True)[:top_n]
    nouns = sorted(range(len(noun_row)), key=lambda c: noun_row[c], reverse=True)[:top_n]
    zv = sum(math.exp(verb_row[v]) for v in verbs)
    zn = sum(math.exp(noun_row[n]) for n in nouns)
    pairs = []
    for v in verbs:
        for n in nouns:
            pairs.append((math.exp(verb_row[v]) / zv * math.exp(noun_row[n]) / zn, v * 1000 + n))
    pairs.sort(reverse=True)
    return pairs[:top_n]


def test_action_scores_match_literal_reference():
    rng = np.random.default_rng(7)
    verb, noun = rng.normal(size=(12, 97)) * 2, rng.normal(size=(12, 300)) * 2
    verbs, nouns, probs = epic.action_scores(verb, noun)
    assert verbs.shape == nouns.shape == probs.shape == (12, 100)
    for i in range(12):
        ref = _literal_top_actions(verb[i].tolist(), noun[i].tolist())
        assert epic.action_id(verbs[i], nouns[i]).tolist() == [a for _, a in ref]
        np.testing.assert_allclose(probs[i], [p for p, _ in ref], rtol=1e-9)


def test_metrics_match_literal_reference_on_random_scores(tmp_path, val_rows):
    """Action top-1/top-5 on random scores against the literal official semantics."""
    rng = np.random.default_rng(3)
    rows = [val_rows[i] for i in rng.choice(len(val_rows), size=150, replace=False)]
    subset = tmp_path / "subset.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # Scores near the truth so that top-5 hits actually happen.
    verb = rng.normal(size=(150, 97))
    noun = rng.normal(size=(150, 300))
    for i, r in enumerate(rows):
        verb[i, int(r["verb_class"])] += rng.uniform(0, 3)
        noun[i, int(r["noun_class"])] += rng.uniform(0, 4)
    got = epic.compute_metrics(validate([r["narration_id"] for r in rows], {"verb": verb, "noun": noun}), subset)
    at1 = at5 = verb5 = 0
    for i, r in enumerate(rows):
        truth = int(r["verb_class"]) * 1000 + int(r["noun_class"])
        top = [a for _, a in _literal_top_actions(verb[i].tolist(), noun[i].tolist())]
        at1 += truth == top[0]
        at5 += truth in top[:5]
        verb5 += int(r["verb_class"]) in sorted(range(97), key=lambda c: verb[i, c], reverse=True)[:5]
    assert 0 < at1 < at5 < 150  # the check is not vacuous
    assert got["all_action_accuracy_at_1"] == pytest.approx(100 * at1 / 150)
    assert got["all_action_accuracy_at_5"] == pytest.approx(100 * at5 / 150)
    assert got["all_verb_accuracy_at_5"] == pytest.approx(100 * verb5 / 150)
    assert set(got) == {f"all_{t}_accuracy_at_{k}" for t in ("verb", "noun", "action") for k in (1, 5)}


def test_metrics_on_real_validation_csv(epic_dir, val_rows, constructed):
    results, verb_rank, noun_rank = constructed
    got = epic.compute_metrics(results, epic_dir / "EPIC_100_validation.csv", **_csvs(epic_dir))
    want = _expected_metrics(
        val_rows,
        verb_rank,
        noun_rank,
        set(_first_column(epic_dir / "EPIC_100_tail_verbs.csv")),
        set(_first_column(epic_dir / "EPIC_100_tail_nouns.csv")),
        set(_first_column(epic_dir / "EPIC_100_unseen_participant_ids_validation.csv")),
    )
    assert list(got) == list(want)  # the official names, in the official order
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    # Sanity of the construction itself: the subsets differ from the whole.
    assert want["tail_verb_accuracy_at_1"] != want["all_verb_accuracy_at_1"]


def test_probabilities_score_the_same_as_their_logits(epic_dir, constructed):
    results, _, _ = constructed

    def softmax(x):
        z = np.exp(x - x.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    probs = validate(results.ids, {h: softmax(v) for h, v in results.outputs.items()}, "probabilities")
    csv_path = epic_dir / "EPIC_100_validation.csv"
    assert epic.compute_metrics(probs, csv_path) == pytest.approx(epic.compute_metrics(results, csv_path))


def test_only_requested_subsets_are_reported(epic_dir, constructed):
    results, _, _ = constructed
    got = epic.compute_metrics(
        results,
        epic_dir / "EPIC_100_validation.csv",
        tail_verb_classes_csv=epic_dir / "EPIC_100_tail_verbs.csv",
    )
    assert "tail_verb_accuracy_at_1" in got
    assert not any(k.startswith(("tail_noun", "tail_action", "unseen")) for k in got)


def test_missing_and_extra_ids_are_listed(epic_dir, constructed):
    results, _, _ = constructed
    keep = np.arange(len(results)) >= 3
    dropped = results.ids[~keep].tolist()
    partial = results.take(np.nonzero(keep)[0])
    with pytest.raises(ResultsError) as e:
        epic.compute_metrics(partial, epic_dir / "EPIC_100_validation.csv")
    assert "3 annotated segment(s) have no scores" in str(e.value)
    assert all(f"'{d}'" in str(e.value) for d in dropped) and "np.str_" not in str(e.value)
    extra = validate(
        list(results.ids[:-1]) + ["P99_99_9"], {h: v for h, v in results.outputs.items()}
    )
    with pytest.raises(ResultsError, match=r"1 scored id\(s\) are not in the annotations.*P99_99_9"):
        epic.compute_metrics(extra, epic_dir / "EPIC_100_validation.csv")


def test_scoring_needs_verb_and_noun(epic_dir):
    r = validate(["P01_11_0"], {"logits": np.zeros((1, 5))})
    with pytest.raises(ResultsError, match="no 'verb_output'"):
        epic.compute_metrics(r, epic_dir / "EPIC_100_validation.csv")


def test_bad_annotation_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("narration_id,participant_id,verb_class\nP01_1,P01,3\n")
    with pytest.raises(DataError, match="missing column.*noun_class"):
        epic.read_annotations(bad)
    bad.write_text("narration_id,participant_id,verb_class,noun_class\nP01_1,P01,3,300\n")
    with pytest.raises(DataError, match="noun_class outside 0..299"):
        epic.read_annotations(bad)
    with pytest.raises(DataError, match="no such CSV"):
        epic.read_annotations(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- submission


@pytest.fixture(scope="module")
def test_ids(epic_dir):
    return [r["narration_id"] for r in _read_rows(epic_dir / "EPIC_100_test_timestamps.csv")]


def _test_results(ids, seed=0, kind="logits"):
    rng = np.random.default_rng(seed)
    verb, noun = rng.normal(size=(len(ids), 97)), rng.normal(size=(len(ids), 300))
    if kind == "probabilities":
        verb = np.exp(verb) / np.exp(verb).sum(1, keepdims=True)
        noun = np.exp(noun) / np.exp(noun).sum(1, keepdims=True)
    return validate(ids, {"verb": verb, "noun": noun}, kind)


def test_submission_zip_contents(tmp_path, test_ids):
    ids = test_ids[:20]
    r = _test_results(ids)
    out = epic.make_submission(
        r, tmp_path / "sub.zip", sls_pt=2, sls_tl=3, sls_td=4, include_actions=True, expected_ids=ids
    )
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["test.json"]
    sub = epic.read_submission(out)
    assert {k: sub[k] for k in sub if k != "results"} == {
        "version": "0.2",
        "challenge": "action_recognition",
        "sls_pt": 2,
        "sls_tl": 3,
        "sls_td": 4,
    }
    assert list(sub["results"]) == ids
    for n, nid in enumerate(ids):
        entry = sub["results"][nid]
        assert set(entry) == {"verb", "noun", "action"}
        assert list(entry["verb"]) == [str(c) for c in range(97)]
        assert list(entry["noun"]) == [str(c) for c in range(300)]
        np.testing.assert_allclose([entry["verb"][str(c)] for c in range(97)], r.outputs["verb"][n])
        assert len(entry["action"]) == 100
        keys = list(entry["action"])
        v, c = (int(x) for x in keys[0].split(","))
        assert (v, c) == (int(np.argmax(r.outputs["verb"][n])), int(np.argmax(r.outputs["noun"][n])))
        values = list(entry["action"].values())
        assert values == sorted(values, reverse=True) and all(isinstance(x, float) for x in values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.zip"]


def test_submission_of_probabilities_writes_log_probabilities(tmp_path, test_ids):
    r = _test_results(test_ids[:3], seed=1, kind="probabilities")
    sub = epic.read_submission(
        epic.make_submission(r, tmp_path / "p.zip", sls_pt=0, sls_tl=0, sls_td=0, allow_partial=True)
    )
    raw = np.array([sub["results"][test_ids[0]]["noun"][str(c)] for c in range(300)])
    recovered = np.exp(raw) / np.exp(raw).sum()  # what the server's softmax sees
    np.testing.assert_allclose(recovered, r.outputs["noun"][0], rtol=1e-9)


def test_submission_checks_test_ids_and_writes_nothing_on_error(tmp_path, test_ids, epic_dir):
    expected = epic.read_narration_ids(epic_dir / "EPIC_100_test_timestamps.csv")
    assert len(expected) == 13092
    r = _test_results(test_ids[:10])
    out = tmp_path / "sub.zip"
    with pytest.raises(ResultsError, match="13082 test segment"):
        epic.make_submission(r, out, sls_pt=2, sls_tl=3, sls_td=4, expected_ids=expected)
    with pytest.raises(ConfigError, match="sls_tl is 7"):
        epic.make_submission(r, out, sls_pt=2, sls_tl=7, sls_td=4)
    with pytest.raises(ConfigError, match="challenge"):
        epic.make_submission(r, out, sls_pt=2, sls_tl=3, sls_td=4, challenge="action_detection")
    with pytest.raises(ResultsError, match="no 'noun_output'"):
        epic.make_submission(validate(test_ids[:2], {"verb": np.zeros((2, 97))}), out, sls_pt=2, sls_tl=3, sls_td=4)
    assert list(tmp_path.iterdir()) == []


def _official_test_json(verb, noun, ids, sls) -> bytes:
    """test.json as C1-Action-Recognition's create_submission.py builds it (utils/challenge.py, d125b92):
    str(class) -> float(score) dicts per segment under str(narration_id), then json.dumps defaults."""
    results = {}
    for v, n, nid in zip(verb, noun, ids, strict=True):
        results[str(nid)] = {
            "verb": {str(i): float(x) for i, x in enumerate(v)},
            "noun": {str(i): float(x) for i, x in enumerate(n)},
        }
    submission = {"version": "0.2", "challenge": "action_recognition", "sls_pt": sls[0], "sls_tl": sls[1],
                  "sls_td": sls[2], "results": results}
    return json.dumps(submission).encode("utf-8")


def test_submission_lists_segments_in_the_test_csv_order(tmp_path, test_ids):
    ids = np.array(test_ids[:12])
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(12)  # results in record order, which `mtv data prepare` shuffles
    verb = rng.normal(size=(12, 97)).astype(np.float32)
    noun = rng.normal(size=(12, 300)).astype(np.float32)
    r = validate(ids[shuffled], {"verb": verb[shuffled], "noun": noun[shuffled]})
    out = epic.make_submission(r, tmp_path / "sub.zip", sls_pt=2, sls_tl=3, sls_td=4, expected_ids=ids.tolist())
    with zipfile.ZipFile(out) as zf:
        written = zf.read("test.json")
    assert list(json.loads(written)["results"]) == ids.tolist()
    assert written == _official_test_json(verb, noun, ids, (2, 3, 4))  # each segment keeps its own scores


def test_default_submission_is_byte_identical_to_the_official_writer(tmp_path, test_ids):
    ids = np.array(test_ids[:30])  # numpy str ids, as the official results files hold them
    rng = np.random.default_rng(11)
    verb = rng.normal(size=(30, 97)).astype(np.float32) * 5
    noun = rng.normal(size=(30, 300)).astype(np.float32) * 5
    verb[0, :4] = [1e-8, -0.0, 1e6, 123456.78]  # float formats: exponent, negative zero, big, many digits
    noun[1, :2] = [np.float32(0.1), -3.4028235e38]
    r = validate(ids, {"verb": verb, "noun": noun})
    out = epic.make_submission(r, tmp_path / "sub.zip", sls_pt=2, sls_tl=3, sls_td=4, expected_ids=ids.tolist())
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["test.json"]
        assert zf.getinfo("test.json").compress_type == zipfile.ZIP_DEFLATED
        written = zf.read("test.json")
    assert written == _official_test_json(verb, noun, ids, (2, 3, 4))
    assert all(set(e) == {"verb", "noun"} for e in json.loads(written)["results"].values())  # no "action"
    # The opt-in action scores are the only difference.
    with_actions = epic.read_submission(epic.make_submission(
        r, tmp_path / "a.zip", sls_pt=2, sls_tl=3, sls_td=4, expected_ids=ids.tolist(), include_actions=True
    ))
    official = json.loads(written)
    for nid, entry in with_actions["results"].items():
        assert len(entry.pop("action")) == 100
        assert entry == official["results"][nid]


def test_submission_without_test_ids_needs_every_test_segment(tmp_path, test_ids, monkeypatch):
    r = _test_results(test_ids[:10])
    out = tmp_path / "sub.zip"
    with pytest.raises(ResultsError, match=r"scores 10 segments but the EPIC-100 test set has 13092: 13082 test "
                                           r"segment\(s\) are missing.*--test_timestamps"):
        epic.make_submission(r, out, sls_pt=2, sls_tl=3, sls_td=4)
    assert not out.exists()
    epic.make_submission(r, out, sls_pt=2, sls_tl=3, sls_td=4, allow_partial=True)  # a dry run, on request
    assert len(epic.read_submission(out)["results"]) == 10
    # The count is the rule: a file with exactly TEST_SEGMENTS segments passes (a smaller stand-in here,
    # as writing all 13,092 takes ~10 s), one more or one fewer does not.
    monkeypatch.setattr(epic, "TEST_SEGMENTS", 10)
    epic.make_submission(r, tmp_path / "ten.zip", sls_pt=2, sls_tl=3, sls_td=4)
    with pytest.raises(ResultsError, match="1 test segment"):
        epic.make_submission(r.take(np.arange(9)), tmp_path / "nine.zip", sls_pt=2, sls_tl=3, sls_td=4)
    monkeypatch.setattr(epic, "TEST_SEGMENTS", 9)
    with pytest.raises(ResultsError, match="1 more than there are test segments"):
        epic.make_submission(r, tmp_path / "eleven.zip", sls_pt=2, sls_tl=3, sls_td=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.zip", "ten.zip"]


def test_tie_break_rule():
    """Documented in mtv.epic.scoring: equal scores rank the lower class index first; equal action
    scores the better-ranked verb, then the better-ranked noun."""
    verb = np.array([[0.0, 2.0, 2.0, 1.0]])  # verbs 1 and 2 tie
    noun = np.array([[5.0, 0.0, 5.0]])  # nouns 0 and 2 tie
    verbs, nouns, probs = epic.action_scores(verb, noun, top_n=4)
    assert verbs.tolist() == [[1, 1, 2, 2]] and nouns.tolist() == [[0, 2, 0, 2]]
    assert len(set(np.round(probs[0], 12))) == 1  # four equal action scores
    # The metrics follow the same order: the tied verb 2 is second, so only top-5 counts it.
    r = validate(["P01_01_0"], {"verb": np.pad(verb, ((0, 0), (0, 93))), "noun": np.pad(noun, ((0, 0), (0, 297)))})
    labels = epic.SegmentLabels(verb=np.array([2]), noun=np.array([2]), action=epic.action_id([2], [2]),
                                subsets={})
    got = epic.EpicScorer.metrics_from_tops(top_k(raw_scores(r, "verb"), 5), top_k(raw_scores(r, "noun"), 5), labels)
    assert (got["all_verb_accuracy_at_1"], got["all_verb_accuracy_at_5"]) == (0.0, 100.0)
    assert (got["all_noun_accuracy_at_1"], got["all_action_accuracy_at_1"], got["all_action_accuracy_at_5"]) == (
        0.0, 0.0, 100.0)
