"""The input pipeline of `mtv train` / `mtv evaluate` on Kinetics-size clips, through `mtv data bench` (run by hand).

    python benchmarks/data.py [--examples 40] [--batch-size 8] [--eval-batch-size 2] [--batches 16] [--warmup 3]

1. Writes a CSV of `--examples` rows cycling over the real clips in `--videos` (../shared/data/videos by default;
   each row its own id) and runs `mtv data prepare` on it: records stored at 256 px short side (`--min-resize`),
   shuffled and sharded by the default rules, videos prepared in parallel processes. Its wall time is reported.
2. Runs `mtv data bench RECORDS --config=CONFIG --split train` and `--split eval`: the trainer's dataset
   (32 x 224 x 224 clips at stride 2 with the Kinetics config's augmentation: scale jitter, random crop, flip,
   colour augmentation; RandAugment and mixup off, as in configs/kinetics/k400_mtv_b2_cva.py) and the
   evaluator's (4 clips x 3 crops = 12 views per video), each on one pinned core and on every core.

Prints one JSON line: the CPU model, the preparation time, both `mtv data bench` reports and the issue's targets
(>= 8 training clips/s per core, >= 1.7x from 1 to 2 cores). `--override FIELD=VALUE` passes
`--config.FIELD=VALUE` to both runs (the tests shrink the clips with it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository's mtv when run as a script from anywhere
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, here and in the pinned children
SHARED = REPO.parent / "shared" / "data" / "videos"
CONFIG = REPO / "configs" / "kinetics" / "k400_mtv_b2_cva.py"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm"}
TARGETS = {"train_clips_per_s_per_core": 8.0, "speedup_1_to_2_cores": 1.7}


def cpu_model() -> str:
    """`lscpu`'s model name (or /proc/cpuinfo's), for the report."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def write_csv(videos: Path, examples: int, path: Path) -> Path:
    """A `path,label,id` CSV of `examples` rows over the clips in `videos` (labels 0..clips-1)."""
    clips = sorted(p for p in videos.iterdir() if p.suffix in VIDEO_SUFFIXES)
    if not clips:
        raise SystemExit(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {videos}")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "id"])
        for i in range(examples):
            clip = clips[i % len(clips)]
            writer.writerow([str(clip), i % len(clips), f"{clip.stem}_{i:05d}"])
    return path


def _mtv(args: list[str]) -> str:
    """Runs `mtv ARGS` in this process and returns what it printed; exits on failure."""
    import mtv.cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = mtv.cli.run(args)
    if code:
        raise SystemExit(f"`mtv {' '.join(args)}` failed with exit status {code}")
    return out.getvalue()


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, prints one JSON line and returns it as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=SHARED)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--examples", type=int, default=40, help="records to prepare (rows cycle over the clips)")
    parser.add_argument("--min-resize", type=int, default=256, help="short side of the stored frames")
    parser.add_argument("--max-frames", type=int, default=None, help="keep at most this many frames per video")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (config.batch_size)")
    parser.add_argument("--eval-batch-size", type=int, default=2, help="videos per evaluation batch")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before each run")
    parser.add_argument("--splits", default="train,eval")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override for both runs, e.g. dataset_configs.num_frames=8")
    parser.add_argument("--work", type=Path, default=None, help="keep the records here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mtv_bench_data_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv_path = write_csv(args.videos, args.examples, work / "bench.csv")
        records = work / "records"
        prepare = ["data", "prepare", str(csv_path), f"--out={records}", f"--min_resize={args.min_resize}"]
        if args.max_frames:
            prepare.append(f"--max_frames={args.max_frames}")
        start = time.perf_counter()
        _mtv(prepare)
        prepare_s = time.perf_counter() - start
        overrides = [f"--config.{o}" for o in args.override]
        report = {"benchmark": "data", "cpu": cpu_model(), "config": args.config, "examples": args.examples,
                  "min_resize": args.min_resize, "prepare_s": round(prepare_s, 1),
                  "prepare_videos_per_s": round(args.examples / prepare_s, 2)}
        for split in args.splits.split(","):
            batch = [f"--config.batch_size={args.batch_size}"] if split == "train" else [
                f"--batch_size={args.eval_batch_size}"]
            out = _mtv(["data", "bench", str(records), f"--config={args.config}", f"--split={split}",
                        f"--batches={args.batches}", f"--warmup={args.warmup}", *batch, *overrides])
            report[split] = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    train = report.get("train")
    if train:
        report["targets"] = {
            "train_clips_per_s_per_core": [train["clips_per_s_per_core"], TARGETS["train_clips_per_s_per_core"]],
            "train_clips_per_cpu_s": [train["clips_per_cpu_s"], TARGETS["train_clips_per_s_per_core"]],
            "speedup_1_to_2_cores": [train["speedup_all_vs_one_core"], TARGETS["speedup_1_to_2_cores"]]}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
