"""`mtv ensemble`, `mtv submission`, `mtv epic-score` end to end on the real Epic-Kitchens CSVs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from mtv import cli
from mtv.epic import scoring as epic
from mtv.epic.results import read_results, write_epic_pickle, write_results

OFFICIAL_NAMES = [
    "all_verb_accuracy_at_1",
    "all_verb_accuracy_at_5",
    "all_noun_accuracy_at_1",
    "all_noun_accuracy_at_5",
    "all_action_accuracy_at_1",
    "all_action_accuracy_at_5",
    "tail_verb_accuracy_at_1",
    "tail_noun_accuracy_at_1",
    "tail_action_accuracy_at_1",
    "unseen_verb_accuracy_at_1",
    "unseen_noun_accuracy_at_1",
    "unseen_action_accuracy_at_1",
]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def val_rows(epic_dir):
    return _rows(epic_dir / "EPIC_100_validation.csv")


@pytest.fixture(scope="module")
def test_ids(epic_dir):
    return [r["narration_id"] for r in _rows(epic_dir / "EPIC_100_test_timestamps.csv")][:25]


def _threshold_pair(truth, classes, rng):
    """Fusion w*A + (1-w)*B ranks the truth first everywhere exactly when 0.25 < w < 0.35."""
    n = len(truth)
    a, b = np.full((n, classes), -10.0), np.full((n, classes), -10.0)
    for i, t in enumerate(truth):
        decoy = (t + 1 + rng.integers(classes - 1)) % classes
        if i % 2 == 0:
            a[i, t], b[i, decoy], a[i, decoy], b[i, t] = 3.0, 1.0, 0.0, 0.0
        else:
            a[i, decoy], b[i, t], a[i, t], b[i, decoy] = 0.65, 0.35, 0.0, 0.0
    return a, b


@pytest.fixture(scope="module")
def val_files(tmp_path_factory, val_rows):
    rng = np.random.default_rng(5)
    verb = _threshold_pair([int(r["verb_class"]) for r in val_rows], 97, rng)
    noun = _threshold_pair([int(r["noun_class"]) for r in val_rows], 300, rng)
    ids = [r["narration_id"] for r in val_rows]
    folder = tmp_path_factory.mktemp("val")
    paths = []
    for m, name in enumerate("ab"):
        perm = rng.permutation(len(ids))  # each file in its own order
        paths.append(
            write_results(
                folder / f"val_{name}.npz", [ids[i] for i in perm], {"verb": verb[m][perm], "noun": noun[m][perm]}
            )
        )
    return paths


def _random_epic(ids, seed):
    rng = np.random.default_rng(seed)
    return {"verb": rng.normal(size=(len(ids), 97)), "noun": rng.normal(size=(len(ids), 300))}


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_epic_score_prints_official_names(epic_dir, val_files, capsys):
    base = ["epic-score", str(val_files[0]), "--annotations", str(epic_dir / "EPIC_100_validation.csv")]
    subsets = [
        "--tail_verb_classes_csv", str(epic_dir / "EPIC_100_tail_verbs.csv"),
        "--tail_noun_classes_csv", str(epic_dir / "EPIC_100_tail_nouns.csv"),
        "--unseen_participant_ids_csv", str(epic_dir / "EPIC_100_unseen_participant_ids_validation.csv"),
    ]  # fmt: skip
    assert cli.run(base + subsets) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == OFFICIAL_NAMES
    assert cli.run(base + subsets + ["--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics) == OFFICIAL_NAMES
    # Model A alone (w = 1): right on the even half only (see _threshold_pair).
    assert metrics["all_verb_accuracy_at_1"] == 50.0
    assert cli.run(base) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


def test_epic_score_pickle_needs_flag(tmp_path, epic_dir, val_files, capsys):
    pkl = write_epic_pickle(tmp_path / "a.pkl", read_results(val_files[0]))
    args = ["epic-score", str(pkl), "--annotations", str(epic_dir / "EPIC_100_validation.csv"), "--json"]
    assert cli.run(args) == 1
    assert "--allow_pickle" in capsys.readouterr().err
    assert cli.run(args + ["--allow_pickle"]) == 0
    from_pickle = json.loads(capsys.readouterr().out)
    assert cli.run(["epic-score", str(val_files[0]), *args[2:]]) == 0
    assert from_pickle == pytest.approx(json.loads(capsys.readouterr().out))
    assert cli.run(["epic-score", str(pkl)]) == 2  # --annotations is required


def test_ensemble_weights_and_fusion_modes(tmp_path, test_ids):
    a, b = _random_epic(test_ids, 1), _random_epic(test_ids, 2)
    pa = write_results(tmp_path / "a.npz", test_ids, a)
    pb = write_results(tmp_path / "b.npz", test_ids[::-1], {h: v[::-1] for h, v in b.items()})
    out = tmp_path / "fused.npz"
    assert cli.run(["ensemble", str(pa), str(pb), "--weights", "1,3", "--out", str(out)]) == 0
    fused = read_results(out)
    assert fused.ids.tolist() == test_ids and fused.score_kind == "logits"
    np.testing.assert_allclose(fused.outputs["noun"], 0.25 * a["noun"] + 0.75 * b["noun"], rtol=1e-6)
    assert cli.run(["ensemble", str(pa), str(pb), "--fuse", "probabilities", "--out", str(out)]) == 0
    fused = read_results(out)

    def softmax(x):
        return np.exp(x) / np.exp(x).sum(1, keepdims=True)

    assert fused.score_kind == "probabilities"
    np.testing.assert_allclose(fused.outputs["verb"], (softmax(a["verb"]) + softmax(b["verb"])) / 2, rtol=1e-6)
    pkl = tmp_path / "fused.pkl"
    assert cli.run(["ensemble", str(pa), str(pb), "--out", str(pkl)]) == 0
    assert read_results(pkl, allow_pickle=True).heads == ["noun", "verb"]
    # Separate verb and noun weights.
    per_head = ["--verb_weights", "1,3", "--noun_weights", "2,0", "--out", str(out)]
    assert cli.run(["ensemble", str(pa), str(pb), *per_head]) == 0
    fused = read_results(out)
    np.testing.assert_allclose(fused.outputs["verb"], 0.25 * a["verb"] + 0.75 * b["verb"], rtol=1e-6)
    np.testing.assert_allclose(fused.outputs["noun"], a["noun"], rtol=1e-6)


def test_ensemble_bad_inputs_write_nothing(tmp_path, test_ids, capsys):
    good = write_results(tmp_path / "good.npz", test_ids, _random_epic(test_ids, 1))
    nan = _random_epic(test_ids, 2)
    nan["verb"][4, 2] = np.nan
    np.savez(tmp_path / "nan.npz", ids=np.array(test_ids), verb_output=nan["verb"], noun_output=nan["noun"])
    np.savez(
        tmp_path / "narrow.npz", ids=np.array(test_ids), verb_output=nan["noun"][:, :96], noun_output=nan["noun"]
    )
    dup = np.array(test_ids[:-1] + test_ids[:1])
    np.savez(tmp_path / "dup.npz", ids=dup, verb_output=nan["noun"][:, :97], noun_output=nan["noun"])
    write_epic_pickle(tmp_path / "p.pkl", read_results(good))
    write_results(tmp_path / "other.npz", test_ids[1:] + ["P99_1_1"], _random_epic(test_ids, 3))
    out = tmp_path / "out.npz"
    cases = {
        "nan.npz": f"1 non-finite scores (NaN/inf) in 1 rows; first at id '{test_ids[4]}'",
        "narrow.npz": "96 classes; expected 97 verb classes",
        "dup.npz": f"1 duplicate ids, e.g. '{test_ids[0]}'",
        "p.pkl": "--allow_pickle",
        "other.npz": "lacks 'P99_1_1'",
    }
    for name, message in cases.items():
        assert cli.run(["ensemble", str(good), str(tmp_path / name), "--out", str(out)]) == 1, name
        err = capsys.readouterr().err
        assert message in err and name in err, err
        assert not out.exists()
    assert cli.run(["ensemble", str(good), "--weights", "1,x", "--out", str(out)]) == 1
    assert cli.run(["ensemble", str(good), str(good), "--apply_to", str(good), "--out", str(out)]) == 1
    assert "only used with --search" in capsys.readouterr().err
    assert cli.run(["ensemble", str(good), "--search", "--out", str(out)]) == 1
    assert "--annotations" in capsys.readouterr().err
    assert cli.run(["ensemble", str(good), str(good), "--verb_weights", "1,2", "--out", str(out)]) == 1
    assert "go together" in capsys.readouterr().err
    assert _files(tmp_path) == sorted([*cases, "good.npz"])


@pytest.fixture(scope="module")
def small_val(tmp_path_factory, val_rows):
    """600 real validation segments (whole videos), their CSV, and two threshold models' results files."""
    videos = set(sorted({r["video_id"] for r in val_rows})[:40])
    rows = [r for r in val_rows if r["video_id"] in videos][:600]
    folder = tmp_path_factory.mktemp("small_val")
    csv_path = folder / "validation.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rng = np.random.default_rng(6)
    verb = _threshold_pair([int(r["verb_class"]) for r in rows], 97, rng)
    noun = _threshold_pair([int(r["noun_class"]) for r in rows], 300, rng)
    ids = [r["narration_id"] for r in rows]
    paths = [
        write_results(folder / f"val_{name}.npz", ids, {"verb": verb[m], "noun": noun[m]})
        for m, name in enumerate("ab")
    ]
    return csv_path, paths


def test_ensemble_search_reports_held_out_then_applies_to_test(tmp_path, small_val, test_ids, capsys):
    csv_path, val_files = small_val
    ta, tb = _random_epic(test_ids, 11), _random_epic(test_ids, 12)
    pa, pb = write_results(tmp_path / "ta.npz", test_ids, ta), write_results(tmp_path / "tb.npz", test_ids, tb)
    out, val_out = tmp_path / "test_fused.npz", tmp_path / "val_fused.npz"
    args = ["ensemble", *map(str, val_files), "--search", "--annotations", str(csv_path), "--folds", "3"]
    assert cli.run(args + ["--apply_to", f"{pa}", "--out", str(out)]) == 1  # one test file per model
    assert "one test file per validation file" in capsys.readouterr().err
    assert cli.run(args + ["--apply_to", f"{pa},{pb}", "--out", str(out), "--val_out", str(val_out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("  part ") == 3 and "equal weights 50.0000, searched 100.0000" in printed
    assert "held-out all_action_accuracy_at_1: 100.0000 (equal weights 50.0000, gain +50.0000)" in printed
    assert "--verb_weights 0.3,0.7 --noun_weights 0.3,0.7" in printed
    fused = read_results(out)
    np.testing.assert_allclose(fused.outputs["verb"], 0.3 * ta["verb"] + 0.7 * tb["verb"], rtol=1e-6)
    # --val_out holds the held-out fusion: scoring it gives the printed held-out number.
    assert cli.run(["epic-score", str(val_out), "--annotations", str(csv_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all_action_accuracy_at_1"] == 100.0


def test_truncated_results_are_named_errors(tmp_path, small_val, capsys):
    csv_path, val_files = small_val
    cut = tmp_path / "cut.npz"
    data = val_files[0].read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "fused.npz"
    for args in (
        ["epic-score", str(cut), "--annotations", str(csv_path)],
        ["ensemble", str(val_files[1]), str(cut), "--out", str(out)],
        ["ensemble", str(val_files[1]), str(cut), "--search", "--annotations", str(csv_path), "--out", str(out)],
        ["submission", str(cut), "--out", str(out), "--sls_pt", "1", "--sls_tl", "1", "--sls_td", "1"],
    ):
        assert cli.run(args) == 1, args
        err = capsys.readouterr().err
        assert f"'{cut}' is not a readable .npz archive (truncated or corrupt? BadZipFile" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.npz"]


def test_submission_command(tmp_path, epic_dir, test_ids, capsys):
    fused = write_results(tmp_path / "fused.npz", test_ids, _random_epic(test_ids, 4))
    out = tmp_path / "submission.zip"
    sls = ["--sls_pt", "2", "--sls_tl", "3", "--sls_td", "4"]
    # Without --test_timestamps the file must score every one of the 13,092 test segments.
    assert cli.run(["submission", str(fused), "--out", str(out), *sls]) == 1
    assert "scores 25 segments but the EPIC-100 test set has 13092: 13067 test segment(s) are missing" in (
        capsys.readouterr().err
    )
    timestamps = ["--test_timestamps", str(epic_dir / "EPIC_100_test_timestamps.csv")]
    assert cli.run(["submission", str(fused), "--out", str(out), *sls, *timestamps]) == 1
    assert "13067 test segment(s) have no scores" in capsys.readouterr().err
    assert not out.exists()
    # A timestamps CSV of exactly these segments (a stand-in for the full test set).
    subset = tmp_path / "timestamps.csv"
    subset.write_text("narration_id\n" + "\n".join(test_ids) + "\n")
    ours = ["--test_timestamps", str(subset)]
    assert cli.run(["submission", str(fused), "--out", str(out), *sls, *ours]) == 0
    sub = epic.read_submission(out)
    assert (sub["version"], sub["challenge"], sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (
        "0.2",
        "action_recognition",
        2,
        3,
        4,
    )
    assert list(sub["results"]) == test_ids
    assert {len(e["verb"]) for e in sub["results"].values()} == {97}
    assert all(set(e) == {"verb", "noun"} for e in sub["results"].values())  # as the official writer
    assert cli.run(["submission", str(fused), "--out", str(out), *sls, *ours, "--actions"]) == 0
    assert {len(e["action"]) for e in epic.read_submission(out)["results"].values()} == {100}
    out.unlink()
    # Bad inputs: nothing is written.
    assert cli.run(["submission", str(fused), "--out", str(out), "--sls_pt", "2", "--sls_tl", "3"]) == 2
    assert cli.run(["submission", str(fused), "--out", str(out), *sls[:-1], "9"]) == 2
    pkl = write_epic_pickle(tmp_path / "fused.pkl", read_results(fused))
    assert cli.run(["submission", str(pkl), "--out", str(out), *sls, *ours]) == 1
    assert "--allow_pickle" in capsys.readouterr().err
    assert not out.exists()
    assert cli.run(["submission", str(pkl), "--out", str(out), *sls, *ours, "--allow_pickle"]) == 0
    assert "action" not in next(iter(epic.read_submission(out)["results"].values()))


def test_console_entry_point(tmp_path, test_ids, epic_dir):
    bad = tmp_path / "bad.npz"
    np.savez(bad, ids=np.array(test_ids), verb_output=np.zeros((len(test_ids), 97)))
    proc = subprocess.run(
        [sys.executable, "-m", "mtv.cli", "epic-score", str(bad), "--annotations",
         str(epic_dir / "EPIC_100_validation.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "no 'noun_output'" in proc.stderr and "Traceback" not in proc.stderr
