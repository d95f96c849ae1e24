"""examples/epic_entry.py: an Epic-Kitchens entry from the `mtv` command line, run the way a user runs it.

One run of the script (tests/epic_entry_run.py, shared with notebook 03's test) makes every check below;
it dominates this module's time. The failure tests run no model.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mtv.epic import ensemble
from mtv.epic import scoring as epic
from mtv.epic.results import raw_scores, read_results
from tests.conftest import REPO
from tests.epic_entry_run import SCRIPT, epic_entry_run

MODELS = {"rgb_audio": ["rgb", "audio"], "rgb_flow": ["rgb", "flow"]}
# Each command the script runs, how many times: prepare train/validation/test, two models x two splits, ...
CSV_NAMES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv",
             "test": "EPIC_100_test_timestamps.csv"}
COMMANDS = {"data prepare": 3, "train": 2, "evaluate": 4, "ensemble": 1, "epic-score": 3, "submission": 1}


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return epic_entry_run(tmp_path_factory)


def _tails(epic_dir) -> dict:
    return {"tail_verb_classes_csv": epic_dir / "EPIC_100_tail_verbs.csv",
            "tail_noun_classes_csv": epic_dir / "EPIC_100_tail_nouns.csv",
            "unseen_participant_ids_csv": epic_dir / "EPIC_100_unseen_participant_ids_validation.csv"}


def _header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _column(path, name: str) -> list[str]:
    with open(path, newline="") as f:
        return [row[name] for row in csv.DictReader(f)]


def _module():
    spec = importlib.util.spec_from_file_location("epic_entry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_runs_every_command_and_prints_one_json_line(entry):
    assert len(entry.stdout.splitlines()) == 1, entry.stdout[-2000:]
    shown = [line.split("$ mtv ", 1)[1] for line in entry.stderr.splitlines() if "$ mtv " in line]
    for command, count in COMMANDS.items():
        assert sum(s.startswith(command + " ") for s in shown) == count, (command, shown)
    for model in MODELS:  # each model trained from its own tiny config
        assert any(s.startswith("train ") and f"tiny_epic_mm.py:{model}" in s for s in shown)
    report = entry.report
    assert set(report["models"]) == set(MODELS)
    for name, streams in MODELS.items():
        assert report["models"][name]["streams"] == streams
    values = [v for m in report["models"].values() for v in m["validation"].values()]
    values += list(report["ensemble"]["validation_held_out"].values())
    values += [report["ensemble"][k] for k in ("held_out", "equal_weights", "gain")]
    assert values and np.isfinite(values).all()
    assert all(0 <= v <= 100 for v in values[:-1])  # accuracies in percent; the gain may be negative
    held = report["ensemble"]
    assert held["gain"] == pytest.approx(held["held_out"] - held["equal_weights"], abs=2e-4)  # printed to 4 places
    for head in ("verb", "noun"):
        assert len(held["weights"][head]) == 2 and sum(held["weights"][head]) == pytest.approx(1, abs=1e-3)
    assert report["submission"] == str(entry.workdir / "submission.zip")


def test_every_metric_is_the_official_score_of_the_results_files(entry, epic_dir):
    report, results = entry.report, entry.workdir / "results"
    validation_csv = report["validation_csv"]
    val_ids = _column(validation_csv, "narration_id")
    scores = {}
    for name, streams in MODELS.items():
        scores[name] = read_results(results / f"{name}_validation.npz")
        assert sorted(scores[name].ids) == sorted(val_ids)
        assert scores[name].outputs["verb"].shape == (len(val_ids), 97)
        assert scores[name].outputs["noun"].shape == (len(val_ids), 300)
        expected = epic.compute_metrics(scores[name], validation_csv, **_tails(epic_dir))
        assert any(k.startswith("tail_") for k in expected) and any(k.startswith("unseen_") for k in expected)
        assert report["models"][name]["validation"] == pytest.approx(expected)
        config = json.loads((entry.workdir / "runs" / name / "config.json").read_text())
        assert list(config["model"]["modalities"]) == streams
    assert not np.allclose(scores["rgb_audio"].outputs["verb"], scores["rgb_flow"].outputs["verb"])

    metric = report["ensemble"]["metric"]
    held_out = epic.compute_metrics(results / "ensemble_validation_held_out.npz", validation_csv, **_tails(epic_dir))
    assert report["ensemble"]["validation_held_out"] == pytest.approx(held_out)
    assert report["ensemble"]["held_out"] == pytest.approx(held_out[metric], abs=1e-4)
    equal = epic.compute_metrics(ensemble.fuse(list(scores.values())), validation_csv)
    assert report["ensemble"]["equal_weights"] == pytest.approx(equal[metric], abs=1e-4)


def test_the_submission_holds_the_fused_scores_of_every_test_segment(entry):
    report, results = entry.report, entry.workdir / "results"
    test_ids = _column(report["test_timestamps_csv"], "narration_id")
    with zipfile.ZipFile(report["submission"]) as z:
        assert z.namelist() == ["test.json"]
    content = epic.read_submission(report["submission"])
    assert (content["version"], content["challenge"]) == ("0.2", "action_recognition")
    assert list(content["results"]) == test_ids
    fused = read_results(results / "ensemble_test.npz")
    for i, narration_id in enumerate(fused.ids):
        segment = content["results"][narration_id]
        assert set(segment) == {"verb", "noun"}  # the official format: no actions unless asked
        for head, count in (("verb", 97), ("noun", 300)):
            written = [segment[head][str(c)] for c in range(count)]
            np.testing.assert_allclose(written, raw_scores(fused, head)[i], rtol=1e-6)
    # The fused test scores are those of the printed weights (rounded to 4 digits) applied to both models.
    tests = [read_results(results / f"{name}_test.npz") for name in MODELS]
    refused = ensemble.fuse(tests, {h: np.array(w) for h, w in report["ensemble"]["weights"].items()})
    for head in ("verb", "noun"):
        np.testing.assert_allclose(refused.outputs[head], fused.outputs[head], atol=1e-3)


def test_the_split_has_the_official_columns_participants_and_every_segment_stored(entry, epic_dir):
    annotations = entry.workdir / "annotations"
    assert _header(annotations / "EPIC_100_validation.csv") == _header(epic_dir / "EPIC_100_validation.csv")
    assert _header(annotations / "EPIC_100_train.csv") == _header(epic_dir / "EPIC_100_validation.csv")
    assert _header(annotations / "EPIC_100_test_timestamps.csv") == _header(epic_dir / "EPIC_100_test_timestamps.csv")
    unseen = set(_column(epic_dir / "EPIC_100_unseen_participant_ids_validation.csv", "participant_id"))
    participants = set(_column(annotations / "EPIC_100_validation.csv", "participant_id"))
    assert unseen & participants and participants - unseen  # unseen and seen participants to score
    assert len(set(_column(annotations / "EPIC_100_validation.csv", "video_id"))) >= entry.report["ensemble"]["folds"]
    for split, count in entry.report["segments"].items():
        summary = json.loads((entry.workdir / "records" / f"{split}-summary.json").read_text())
        assert summary["num_examples"] == count == len(_column(annotations / CSV_NAMES[split], "narration_id"))
        assert summary["skipped"] == [] and summary["flow_sources"] == {"farneback": count}


def test_a_failing_command_stops_with_its_exit_status_and_error(tmp_path, epic_dir):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    runner = _module().Runner(tmp_path / "logs", jobs=1)
    with pytest.raises(Exception, match=r"(?s)`mtv epic-score .*bad\.npz.*` failed with exit status 1.*"
                                        r"mtv epic-score: error: .*bad\.npz") as err:
        runner.run({"score": ["epic-score", str(bad), f"--annotations={epic_dir / 'EPIC_100_validation.csv'}"]})
    assert type(err.value).__name__ == "StepFailed"
    assert "mtv epic-score: error:" in (tmp_path / "logs" / "score.log").read_text()  # the log keeps it too


def test_the_script_refuses_missing_clips_and_a_used_workdir(tmp_path, epic_dir):
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *args, f"--epic_dir={epic_dir}"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    done = run(f"--workdir={tmp_path / 'a'}", f"--videos={tmp_path}")
    assert done.returncode == 1 and done.stdout == ""
    assert "eye_makeup_audio__mmaction2_test.avi" in done.stderr and str(tmp_path) in done.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("")
    done = run(f"--workdir={used}")
    assert done.returncode == 1 and f"--workdir {used} is not empty" in done.stderr
