#!/usr/bin/env python3
"""An Epic-Kitchens-100 entry, end to end, through the `mtv` command line, on tiny models (about a minute).

    python examples/epic_entry.py --workdir=/tmp/epic_entry [--videos=DIR] [--epic_dir=DIR]

The steps are the commands of a real entry, run as a user runs them:

1. a small Epic-style split (train / validation / test CSVs in the official columns) from the two real clips
   with audio (examples/epic_split.py);
2. `mtv data prepare --audio --flow` for each split: RGB frames, the audio of each segment's span and
   optical flow;
3. `mtv train` of two tiny M&M models with different streams (RGB + audio, RGB + flow;
   examples/configs/tiny_epic_mm.py);
4. `mtv evaluate` of both on validation and on test: the per-segment results files keyed by narration_id;
5. `mtv ensemble --search`: verb and noun weights searched on validation, the gain reported on held-out parts
   of whole videos, the weights applied to the test results;
6. `mtv epic-score` of each model and of the held-out ensemble (with the official tail classes and unseen
   participants);
7. `mtv submission`: the challenge zip of the fused test results.

Each command and its time go to stderr, its output to WORKDIR/logs/; stdout gets one JSON line with every
metric. A failing command stops the script with its exit status and its stderr. For a real entry, replace the
split by the EPIC-100 CSVs and videos and the tiny configs by configs/epic_kitchens/epic_mm_*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # epic_split beside this file, also when run from elsewhere

import epic_split  # noqa: E402

REPO = HERE.parent
CONFIG = HERE / "configs" / "tiny_epic_mm.py"
MODELS = {"rgb_audio": ("rgb", "audio"), "rgb_flow": ("rgb", "flow")}
METRIC = "all_action_accuracy_at_1"
TAIL_AND_UNSEEN = {"tail_verb_classes_csv": "EPIC_100_tail_verbs.csv",
                   "tail_noun_classes_csv": "EPIC_100_tail_nouns.csv",
                   "unseen_participant_ids_csv": "EPIC_100_unseen_participant_ids_validation.csv"}
_GAIN = re.compile(r"^held-out (\S+): (-?[\d.]+) \(equal weights (-?[\d.]+), gain ([-+][\d.]+)\)$", re.M)
_FLAGS = re.compile(r"as flags: --verb_weights (\S+) --noun_weights (\S+)$", re.M)


class StepFailed(Exception):
    """An `mtv` command exited non-zero, or its output was not what the next step needs."""


def default_shared() -> Path:
    """$MTV_SHARED_DIR when set, else the `shared` folder beside the repository (as the tests and notebooks)."""
    return Path(os.environ.get("MTV_SHARED_DIR") or REPO.parent / "shared")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--videos", type=Path, default=default_shared() / "data" / "videos",
                        help="folder of the real clips with audio (default: %(default)s)")
    parser.add_argument("--epic_dir", type=Path, default=default_shared() / "data" / "epic_kitchens",
                        help="folder of the official tail-class and unseen-participant CSVs (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="held-out parts of whole videos for the ensemble gain")
    parser.add_argument("--grid", type=int, default=10, help="weight-search resolution (shares k/grid)")
    parser.add_argument("--jobs", type=int, default=2, help="independent commands run at the same time")
    for name, what in (("pt", "pre-training"), ("tl", "training labels"), ("td", "training data")):
        parser.add_argument(f"--sls_{name}", type=int, default=0,
                            help=f"supervision level, {what} (github.com/epic-kitchens/sls; 0 here)")
    return parser.parse_args(argv)


class Runner:
    """Runs `mtv` commands (this interpreter's `python -m mtv.cli`), logging each to WORKDIR/logs/NAME.log."""

    def __init__(self, logs: Path, jobs: int):
        self.logs, self.jobs = logs, max(1, jobs)
        logs.mkdir(parents=True, exist_ok=True)

    def _one(self, name: str, args: list[str]) -> str:
        shown = "mtv " + " ".join(shlex.quote(a) for a in args)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mtv.cli", *args], capture_output=True, text=True,
                              env={"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ})
        seconds = time.perf_counter() - start
        log = self.logs / f"{name}.log"
        log.write_text(f"$ {shown}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
        print(f"[{seconds:5.1f} s] $ {shown}", file=sys.stderr, flush=True)
        if done.returncode != 0:
            raise StepFailed(f"`{shown}` failed with exit status {done.returncode} (log: {log}):\n"
                             f"{done.stderr.strip()[-4000:] or done.stdout.strip()[-4000:]}")
        return done.stdout

    def run(self, commands: dict[str, list[str]]) -> dict[str, str]:
        """Runs independent commands, `jobs` at a time; each one's stdout by name; StepFailed on a failure."""
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = {name: pool.submit(self._one, name, args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _json(text: str, what: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise StepFailed(f"{what} did not print JSON ({err}):\n{text[-2000:]}") from None


def _held_out_report(text: str) -> dict:
    """The gain and the final weights that `mtv ensemble --search` printed."""
    gain, flags = _GAIN.search(text), _FLAGS.search(text)
    if gain is None or flags is None:
        raise StepFailed(f"`mtv ensemble --search` printed no held-out report and weights:\n{text[-2000:]}")
    return {"metric": gain.group(1), "held_out": float(gain.group(2)), "equal_weights": float(gain.group(3)),
            "gain": float(gain.group(4)),
            "weights": {head: [float(w) for w in flags.group(i).split(",")]
                        for i, head in ((1, "verb"), (2, "noun"))}}


def _check_prepared(records: Path, split: str, expected: int) -> None:
    summary = json.loads((records / f"{split}-summary.json").read_text())
    if summary["num_examples"] != expected:
        raise StepFailed(f"`mtv data prepare` stored {summary['num_examples']} of the {expected} {split} segments; "
                         f"skipped: {summary['skipped']}")


def entry(args: argparse.Namespace) -> dict:
    """Runs every step; returns the report (every metric, the submission's path)."""
    work = args.workdir.resolve()
    if work.exists() and any(work.iterdir()):
        raise StepFailed(f"--workdir {work} is not empty: give a new or empty folder")
    tails = {flag: args.epic_dir / name for flag, name in TAIL_AND_UNSEEN.items()}
    missing = [str(p) for p in tails.values() if not p.is_file()]
    if missing:
        raise StepFailed(f"--epic_dir: missing {', '.join(missing)} (the official EPIC-100 CSVs)")
    started = time.perf_counter()
    split = epic_split.write_split(args.videos, work)
    records, runs, results = work / "records", work / "runs", work / "results"
    results.mkdir(parents=True, exist_ok=True)
    runner = Runner(work / "logs", args.jobs)

    runner.run({f"prepare_{name}": ["data", "prepare", str(csv_path), f"--out={records}", f"--name={name}",
                                    f"--video_root={split.video_root}", "--audio", "--flow", "--flow_source=compute",
                                    "--min_resize=32"]
                for name, csv_path in split.csvs.items()})
    for name, count in split.segments.items():
        _check_prepared(records, name, count)

    runner.run({f"train_{model}": ["train", f"--config={CONFIG}:{model}", f"--workdir={runs / model}",
                                   f"--config.dataset_configs.base_dir={records}", "--verbose=0"]
                for model in MODELS})

    def scores(model: str, part: str) -> Path:
        return results / f"{model}_{part}.npz"

    runner.run({f"evaluate_{model}_{part}": ["evaluate", f"--checkpoint={runs / model}",
                                             f"--data={records}/{part}-*.tfrecord", f"--out={scores(model, part)}"]
                for model in MODELS for part in ("validation", "test")})

    annotations = split.csvs["validation"]
    held_out, fused_test = results / "ensemble_validation_held_out.npz", results / "ensemble_test.npz"
    ensemble = runner.run({"ensemble": [
        "ensemble", *(str(scores(m, "validation")) for m in MODELS), "--search", f"--annotations={annotations}",
        f"--apply_to={','.join(str(scores(m, 'test')) for m in MODELS)}", f"--out={fused_test}",
        f"--val_out={held_out}", f"--folds={args.folds}", f"--grid={args.grid}", f"--metric={METRIC}"]})["ensemble"]
    report = _held_out_report(ensemble)

    tail_flags = [f"--{flag}={path}" for flag, path in tails.items()]
    scored = runner.run({f"epic_score_{name}": ["epic-score", str(path), f"--annotations={annotations}",
                                                *tail_flags, "--json"]
                         for name, path in {**{m: scores(m, "validation") for m in MODELS},
                                            "ensemble": held_out}.items()})
    metrics = {name.removeprefix("epic_score_"): _json(text, f"`mtv {name}`") for name, text in scored.items()}

    submission = work / "submission.zip"
    runner.run({"submission": ["submission", str(fused_test), f"--out={submission}", f"--sls_pt={args.sls_pt}",
                               f"--sls_tl={args.sls_tl}", f"--sls_td={args.sls_td}",
                               f"--test_timestamps={split.csvs['test']}"]})
    return {
        "models": {m: {"streams": list(streams), "validation": metrics[m]} for m, streams in MODELS.items()},
        "ensemble": {**report, "folds": args.folds, "validation_held_out": metrics["ensemble"]},
        "submission": str(submission),
        "segments": split.segments,
        "results_dir": str(results),
        "validation_csv": str(annotations),
        "test_timestamps_csv": str(split.csvs["test"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the entry; prints its one JSON line, or the failing step's error on stderr (exit status 1)."""
    args = parse_args(argv)
    try:
        report = entry(args)
    except (StepFailed, FileNotFoundError) as err:
        print(f"epic_entry: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
