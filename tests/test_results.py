"""Results files: round trips, the official pickle layout, and every kind of bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mtv.epic import results as res
from mtv.errors import ResultsError


def _epic(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P01_11_{i}" for i in range(n)]
    return ids, {"verb": rng.normal(size=(n, 97)).astype(np.float32), "noun": rng.normal(size=(n, 300))}


def _only_file(folder):
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_epic_npz(tmp_path):
    ids, outputs = _epic()
    path = res.write_results(tmp_path / "val.npz", ids, outputs, score_kind="logits")
    r = res.read_results(path)
    assert r.ids.tolist() == ids
    assert r.heads == ["noun", "verb"]
    np.testing.assert_array_equal(r.outputs["verb"], outputs["verb"])
    np.testing.assert_array_equal(r.outputs["noun"], outputs["noun"])
    assert r.score_kind == "logits" and r.source == str(path)
    # The archive holds plain arrays only (no pickles) and mirrors ids as narration_id for official tools.
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"ids", "narration_id", "verb_output", "noun_output", "score_kind"}
        assert npz["narration_id"].tolist() == ids
    assert _only_file(tmp_path) == ["val.npz"]


def test_round_trip_single_head_probabilities(tmp_path):
    probs = np.full((3, 5), 0.2)
    path = res.write_results(tmp_path / "k.npz", ["a", "b", "c"], {"logits": probs}, score_kind="probabilities")
    with np.load(path) as npz:
        assert "narration_id" not in npz.files and "logits_output" in npz.files
    r = res.read_results(path)
    assert r.score_kind == "probabilities" and r.heads == ["logits"]


def test_official_npz_with_only_narration_id_is_read(tmp_path):
    ids, outputs = _epic(3)
    path = tmp_path / "official.npz"
    np.savez(path, narration_id=np.array(ids), verb_output=outputs["verb"], noun_output=outputs["noun"])
    r = res.read_results(path)
    assert r.ids.tolist() == ids and r.score_kind == "logits"


def test_epic_pickle_needs_allow_pickle(tmp_path):
    ids, outputs = _epic(3)
    r = res.validate(ids, outputs)
    path = res.write_epic_pickle(tmp_path / "scores.pkl", r)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"verb_output", "noun_output", "narration_id"}
    assert raw["verb_output"].shape == (3, 97) and raw["noun_output"].shape == (3, 300)
    with pytest.raises(ResultsError, match="--allow_pickle") as e:
        res.read_results(path)
    assert "arbitrary code" in str(e.value) and "scores.pkl" in str(e.value)
    back = res.read_results(path, allow_pickle=True)
    assert back.ids.tolist() == ids
    np.testing.assert_allclose(back.outputs["noun"], outputs["noun"], rtol=1e-6)


def test_pickle_list_layout(tmp_path):
    ids, outputs = _epic(3)
    rows = [
        {"verb_output": outputs["verb"][i], "noun_output": outputs["noun"][i], "narration_id": ids[i]}
        for i in range(3)
    ]
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps(rows))
    r = res.read_results(path, allow_pickle=True)
    assert r.ids.tolist() == ids
    np.testing.assert_array_equal(r.outputs["verb"][2], outputs["verb"][2])


def test_pickle_without_pkl_suffix_is_still_refused(tmp_path):
    ids, outputs = _epic(2)
    path = tmp_path / "scores.bin"
    path.write_bytes(pickle.dumps({"verb_output": outputs["verb"], "noun_output": outputs["noun"],
                                   "narration_id": np.array(ids)}))
    with pytest.raises(ResultsError, match="--allow_pickle"):
        res.read_results(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_error_and_write_nothing(tmp_path, bad):
    ids, outputs = _epic(5)
    outputs["noun"][3, 7] = bad
    outputs["noun"][4, 1] = bad
    with pytest.raises(ResultsError) as e:
        res.write_results(tmp_path / "x.npz", ids, outputs)
    msg = str(e.value)
    assert "2 non-finite" in msg and "'P01_11_3'" in msg and "noun_output" in msg and "x.npz" in msg
    assert _only_file(tmp_path) == []


def test_non_finite_in_file_written_elsewhere(tmp_path):
    ids, outputs = _epic(3)
    outputs["verb"][0, 0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, ids=np.array(ids), verb_output=outputs["verb"], noun_output=outputs["noun"])
    with pytest.raises(ResultsError, match="1 non-finite.*'P01_11_0'"):
        res.read_results(path)


@pytest.mark.parametrize("head,classes,want", [("verb", 96, 97), ("noun", 301, 300)])
def test_wrong_epic_class_count(tmp_path, head, classes, want):
    ids, outputs = _epic(2)
    outputs[head] = np.zeros((2, classes))
    with pytest.raises(ResultsError, match=f"{classes} classes; expected {want} {head}"):
        res.write_results(tmp_path / "x.npz", ids, outputs)
    assert _only_file(tmp_path) == []


def test_expected_mapping_checks_other_heads(tmp_path):
    with pytest.raises(ResultsError, match="expected 400 logits"):
        res.write_results(tmp_path / "k.npz", ["a"], {"logits": np.zeros((1, 399))}, expected={"logits": 400})
    path = res.write_results(tmp_path / "k.npz", ["a"], {"logits": np.zeros((1, 400))}, expected={"logits": 400})
    with pytest.raises(ResultsError, match="expected 600"):
        res.read_results(path, expected={"logits": 600})


def test_duplicate_ids_are_listed(tmp_path):
    ids = ["a", "b", "a", "c", "c", "d"]
    with pytest.raises(ResultsError) as e:
        res.write_results(tmp_path / "d.npz", ids, {"logits": np.zeros((6, 2))})
    assert "2 duplicate ids" in str(e.value) and "'a'" in str(e.value) and "'c'" in str(e.value)
    assert _only_file(tmp_path) == []


def test_mismatched_lengths(tmp_path):
    with pytest.raises(ResultsError, match="has 3 rows but there are 2 ids"):
        res.write_results(tmp_path / "m.npz", ["a", "b"], {"logits": np.zeros((3, 4))})
    ids, outputs = _epic(3)
    path = tmp_path / "m2.npz"
    np.savez(path, ids=np.array(ids), verb_output=outputs["verb"], noun_output=outputs["noun"][:2])
    with pytest.raises(ResultsError, match="'noun_output' has 2 rows but there are 3 ids"):
        res.read_results(path)


def test_missing_arrays(tmp_path):
    p1 = tmp_path / "noids.npz"
    np.savez(p1, verb_output=np.zeros((2, 97)))
    with pytest.raises(ResultsError, match="no 'ids'"):
        res.read_results(p1)
    p2 = tmp_path / "noscores.npz"
    np.savez(p2, ids=np.array(["a"]))
    with pytest.raises(ResultsError, match="no '<head>_output'"):
        res.read_results(p2)
    with pytest.raises(ResultsError, match="no such results file"):
        res.read_results(tmp_path / "absent.npz")


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ResultsError, match="score_kind"):
        res.write_results(tmp_path / "a.npz", ["a"], {"logits": np.zeros((1, 2))}, score_kind="softmax")
    with pytest.raises(ResultsError, match="negative"):
        res.write_results(tmp_path / "a.npz", ["a"], {"logits": -np.ones((1, 2))}, score_kind="probabilities")
    with pytest.raises(ResultsError, match=r"\[N, classes\]"):
        res.write_results(tmp_path / "a.npz", ["a"], {"logits": np.zeros(2)})
    with pytest.raises(ResultsError, match=r"\.npz"):
        res.write_results(tmp_path / "a.json", ["a"], {"logits": np.zeros((1, 2))})
    (tmp_path / "m.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(ResultsError, match="torch"):
        res.read_results(tmp_path / "m.pt")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultsError, match="not a readable"):
        res.read_results(tmp_path / "junk.npz")
    assert sorted(_only_file(tmp_path)) == ["junk.npz", "m.pt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    ids, outputs = _epic(2)
    path = res.write_results(tmp_path / "r.npz", ids, outputs)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        res.write_results(path, ids, {k: v + 1 for k, v in outputs.items()})
    assert path.read_bytes() == before
    assert _only_file(tmp_path) == ["r.npz"]


def test_take_reorders_every_array():
    r = res.validate(["a", "b", "c"], {"logits": np.arange(6.0).reshape(3, 2)})
    t = r.take(np.array([2, 0]))
    assert t.ids.tolist() == ["c", "a"]
    np.testing.assert_array_equal(t.outputs["logits"], [[4.0, 5.0], [0.0, 1.0]])


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_truncated_or_corrupt_npz_is_a_named_error(tmp_path, damage):
    ids, outputs = _epic(6)
    path = res.write_results(tmp_path / "scores.npz", ids, outputs)
    data = bytearray(path.read_bytes())
    if damage == "truncate":  # e.g. a copy cut short: the zip directory at the end is gone
        data = data[: len(data) // 2]
    else:  # flipped bytes inside the stored noun array: the member's CRC no longer matches
        start = data.index(b"noun_output.npy") + 200
        data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(ResultsError, match=r"'.*scores\.npz' is not a readable \.npz archive \(truncated or corrupt"):
        res.read_results(path)


def test_truncated_pickle_is_a_named_error(tmp_path):
    ids, outputs = _epic(3)
    path = res.write_epic_pickle(tmp_path / "scores.pkl", res.validate(ids, outputs))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ResultsError, match=r"scores\.pkl' could not be unpickled \(truncated or corrupt"):
        res.read_results(path, allow_pickle=True)


def test_pickled_probabilities_are_log_probabilities(tmp_path):
    """The official layout has no score kind and the official tools softmax what they read."""
    ids, outputs = _epic(4)
    probs = {h: np.exp(v) / np.exp(v).sum(axis=1, keepdims=True) for h, v in outputs.items()}
    r = res.validate(ids, probs, "probabilities")
    path = res.write_epic_pickle(tmp_path / "p.pkl", r)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    for head in ("verb", "noun"):
        softmaxed = np.exp(raw[f"{head}_output"]) / np.exp(raw[f"{head}_output"]).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmaxed, probs[head], rtol=1e-6)  # float32 rows sum to 1 +- 1e-7
    # Logits keep their dtype, so the .pkl ranks exactly as the .npz does.
    logits = res.write_epic_pickle(tmp_path / "l.pkl", res.validate(ids, outputs))
    with open(logits, "rb") as f:
        raw = pickle.load(f)
    assert raw["verb_output"].dtype == np.float32 and raw["noun_output"].dtype == np.float64
    np.testing.assert_array_equal(raw["noun_output"], outputs["noun"])
