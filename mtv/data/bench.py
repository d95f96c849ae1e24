"""`mtv data bench RECORDS --config=CONFIG`: how fast the input pipeline of `mtv train` / `mtv evaluate` runs.

The dataset is built by the functions the trainer and the evaluator call (`build_datasets(...).train_dataset`
for `split="train"`; `eval_dataset_configs` + `make_dataset(is_train=False, with_ids=True)` as
`mtv.eval.evaluate.evaluate_data` reads records), with RECORDS in place of the config's tables. It is timed
twice, each time in a fresh process: pinned to one core (`os.sched_setaffinity`, TensorFlow's intra/inter-op
pools and tf.data's private thread pool and autotune budget all set to 1), then on every core this process may
use. Warm-up batches (tracing, the first reads, autotune) are not timed. Besides wall-clock rates, each run
reports its process CPU seconds and clips per CPU-second, which other jobs on a shared machine barely move. A
clip is one training example; an evaluation example is one video of `views` = clips x crops views, so
evaluation also reports views per second.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mtv.errors import ConfigError, DataError

SPLITS = ("train", "eval")
EVAL_BATCH_SIZE = 8  # `mtv evaluate --batch_size`'s default


def _train_dataset(config: Any, records: str, batch_size: int, workdir: str) -> tuple:
    """The trainer's dataset (build_datasets + train_dataset) over `records`; returns (dataset, skip count fn)."""
    from mtv.data import mixing
    from mtv.data.datasets import build_datasets, model_streams
    from mtv.data.streams import stream_names

    if config.get("cofinetune"):
        raise ConfigError("mtv data bench times one dataset: a co-finetuning config (cofinetune=True) has several")
    config.dataset_name = "video_tfrecord_dataset"
    dc = config.dataset_configs
    dc.base_dir = ""
    dc.tables = {"train": records, "validation": ""}
    data = build_datasets(config, workdir)
    mixup = config.get("mixup") or {}
    alpha = float(mixup.get("alpha") or 0.0) if hasattr(mixup, "get") else 0.0
    drop = mixing.check_modality_dropout(config.get("modality_dropout"),
                                         stream_names(model_streams(config, data.heads)) or ("rgb",))
    ds = data.train_dataset(batch_size, seed=int(config.get("rng_seed", 0)), mixup_alpha=alpha,
                            modality_dropout=drop)
    return ds, lambda: data.skipped


def _eval_dataset(config: Any, records: str, batch_size: int) -> tuple:
    """The evaluator's record reader over `records` (as `evaluate_data` builds it); returns (dataset, skips fn)."""
    from mtv.data import tfrecord
    from mtv.data.datasets import classes_from_configs, model_streams
    from mtv.data.streams import reader_configs, reader_modalities
    from mtv.eval.evaluate import _tfrecord_labels, eval_dataset_configs

    dc = eval_dataset_configs(config)
    classes = classes_from_configs(dc)
    streams = model_streams(config, classes)
    files = tfrecord.resolve_files(records)
    label_names = [n for n in _tfrecord_labels(files) if n in classes]
    dc = reader_configs(dc, streams) if streams else dc
    counter = tfrecord.SkipCounter()
    ds = tfrecord.make_dataset(files, dataset_configs=dc, is_train=False, batch_size=batch_size,
                               label_names=tuple(label_names), num_classes={n: classes[n] for n in label_names} or None,
                               with_ids=True, skip_counter=counter,
                               modalities=reader_modalities(streams) if streams else ("rgb",))
    return ds, lambda: counter.count


def measure(spec: dict) -> dict:
    """Runs in the pinned child: builds the dataset on spec['cores'] and times spec['batches'] batches."""
    cores = spec["cores"]
    os.sched_setaffinity(0, cores)
    import tensorflow as tf

    n = len(cores)
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)
    with open(spec["config"], "rb") as f:
        config = pickle.load(f)
    if spec["split"] == "train":
        ds, skipped = _train_dataset(config, spec["records"], spec["batch_size"], spec["workdir"])
    else:
        ds, skipped = _eval_dataset(config, spec["records"], spec["batch_size"])
    options = tf.data.Options()
    options.threading.private_threadpool_size = n
    options.autotune.cpu_budget = n
    ds = ds.with_options(options)

    def batches():
        while True:  # evaluation reads each record once: read the records again until enough batches are timed
            empty = True
            for element in ds:
                empty = False
                yield element
            if empty:
                raise DataError(f"'{spec['records']}' gave no {spec['split']} batch (every record skipped, or fewer "
                                "records than one training batch)")

    stream = batches()
    for _ in range(spec["warmup"]):
        next(stream)
    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    clips = 0
    for _ in range(spec["batches"]):
        clips += int(tf.nest.flatten(next(stream))[0].shape[0])
    seconds = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (end.ru_utime - usage.ru_utime) + (end.ru_stime - usage.ru_stime)
    return {"cores": n, "clips": clips, "seconds": round(seconds, 3), "clips_per_s": round(clips / seconds, 3),
            "cpu_s": round(cpu, 2), "clips_per_cpu_s": round(clips / cpu, 3) if cpu > 0 else None,
            "peak_rss_mb": round(end.ru_maxrss / 1024, 1), "skipped": int(skipped())}


def _run_child(spec: dict, tmp: Path, label: str) -> dict:
    path = tmp / f"{label}.json"
    path.write_text(json.dumps(spec))
    import mtv

    # The child imports the same mtv as this process, wherever it runs from.
    root = str(Path(mtv.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "mtv.data.bench", str(path)], stdout=subprocess.PIPE, text=True,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    if proc.returncode or "error" in out or not out:
        raise DataError(f"the {label} run of `mtv data bench` failed (exit {proc.returncode}): "
                        f"{out.get('error', 'see its error output above')}")
    return out


def bench(records: str, config: Any, *, split: str = "train", batch_size: int | None = None, batches: int = 10,
          warmup: int = 2) -> dict:
    """Times the `split` dataset of `config` over `records` on one core and on all; returns the report."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if batches < 1 or warmup < 0:
        raise ConfigError(f"--batches must be >= 1 and --warmup >= 0, got {batches} and {warmup}")
    dc = config.get("dataset_configs") or {}
    if batch_size is None:
        batch_size = int(config.get("batch_size") or 0) if split == "train" else EVAL_BATCH_SIZE
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1 (--batch_size or config.batch_size), got {batch_size}")
    cores = sorted(os.sched_getaffinity(0))
    report = {"bench": "data", "records": str(records), "split": split, "batch_size": batch_size,
              "num_frames": dc.get("num_frames"), "crop_size": dc.get("crop_size"), "warmup_batches": warmup,
              "timed_batches": batches, "cores": len(cores)}
    if split == "eval":
        views = int(dc.get("num_test_clips") or 1) * (3 if dc.get("do_three_spatial_crops") else 1)
        report["views"] = views
    with tempfile.TemporaryDirectory(prefix="mtv_data_bench_") as tmp:
        tmp = Path(tmp)
        with open(tmp / "config.pkl", "wb") as f:
            pickle.dump(copy.deepcopy(config), f)
        base = {"records": str(records), "config": str(tmp / "config.pkl"), "split": split,
                "batch_size": batch_size, "batches": batches, "warmup": warmup, "workdir": str(tmp)}
        runs = {"one_core": _run_child({**base, "cores": cores[:1]}, tmp, "one_core")}
        runs["all_cores"] = (_run_child({**base, "cores": cores}, tmp, "all_cores") if len(cores) > 1
                             else runs["one_core"])
    one, every = runs["one_core"]["clips_per_s"], runs["all_cores"]["clips_per_s"]
    report.update({"clips_per_s": every, "clips_per_s_per_core": round(every / len(cores), 3),
                   "one_core_clips_per_s": one, "speedup_all_vs_one_core": round(every / one, 3),
                   # Process CPU time: what the clips cost whatever else the machine runs (wall rates do not).
                   "clips_per_cpu_s": runs["all_cores"]["clips_per_cpu_s"],
                   "one_core_clips_per_cpu_s": runs["one_core"]["clips_per_cpu_s"],
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs.values()),
                   "skipped": max(r["skipped"] for r in runs.values())})
    if split == "eval":
        report.update({"views_per_s": round(every * report["views"], 3),
                       "views_per_s_per_core": round(every * report["views"] / len(cores), 3)})
    report["runs"] = runs
    return report


def _child_main(spec_path: str) -> int:
    """The pinned child process: one JSON line on stdout (the measurement, or {"error": ...})."""
    from mtv.errors import MTVError

    spec = json.loads(Path(spec_path).read_text())
    try:
        result = measure(spec)
    except MTVError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stdout.flush()
    os._exit(_child_main(sys.argv[1]))
