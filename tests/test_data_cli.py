"""`mtv data prepare`: seeded shuffle, default shards, worker processes, and no complete-looking shard on failure."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import mtv.cli
from mtv.data import prepare as prepare_lib
from mtv.data.tfrecord import make_dataset, parse_example, resolve_files
from mtv.errors import DataError
from tests.data.synthetic import level_frames, write_video

CLASSES = 4
TINY_DATA = {"num_frames": 2, "stride": 1, "min_resize": 16, "crop_size": 16}
# Total-variation distance between the label mix of the first records read and the dataset's. A label-sorted
# order gives 0.75 for the first 16 of 4 equal classes; a uniform shuffle rarely exceeds 0.3.
MAX_SKEW = 0.35
FIRST = 16


def _sorted_csv(folder: Path, per_class: int) -> Path:
    """A CSV of CLASSES x per_class rows sorted by label; each class is one tiny video (rows share files)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,id"]
    for label in range(CLASSES):
        write_video(folder / f"class{label}.mp4", level_frames([40 + 50 * label] * 3, 16, 16))
        lines += [f"class{label}.mp4,{label},c{label}_{i:03d}" for i in range(per_class)]
    csv_path = folder / "train.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def _skew(labels) -> float:
    """Total-variation distance between the label mix of `labels` and the uniform mix over CLASSES."""
    counts = np.bincount(np.asarray(labels), minlength=CLASSES) / len(labels)
    return float(np.abs(counts - 1 / CLASSES).sum() / 2)


def _file_order_labels(out: Path) -> list[int]:
    """Labels of every record, shard after shard in file-name order, each shard front to back."""
    return [parse_example(r.numpy()).labels["label"][0]
            for f in resolve_files(out) for r in tf.data.TFRecordDataset(f)]


def _prepare(csv_path: Path, out: Path, *extra: str) -> None:
    code = mtv.cli.run(["data", "prepare", str(csv_path), "--out", str(out), "--num_classes", str(CLASSES),
                        "--min_resize", "0", *extra])
    assert code == 0


def test_prepare_shuffles_a_label_sorted_csv_into_several_shards(tmp_path):
    csv_path = _sorted_csv(tmp_path / "videos", per_class=32)  # 128 rows: twice the old reader's 64-record buffer
    _prepare(csv_path, tmp_path / "shuffled", "--num_workers=1")
    shards = resolve_files(tmp_path / "shuffled")
    assert len(shards) == prepare_lib.default_num_shards(128) == 64  # several shards by default
    labels = _file_order_labels(tmp_path / "shuffled")
    assert sorted(labels) == sorted(np.repeat(np.arange(CLASSES), 32).tolist())
    assert _skew(labels[:FIRST]) <= MAX_SKEW, labels[:FIRST]
    summary = json.loads((tmp_path / "shuffled" / "train-summary.json").read_text())
    assert summary["seed"] == prepare_lib.DEFAULT_SEED and summary["num_examples"] == 128

    # What a training run reads first, whichever way the reader orders and shuffles records.
    ds = make_dataset(shards, dataset_configs=TINY_DATA, is_train=True, batch_size=8, num_classes=CLASSES, seed=0)
    first = [int(i) for _, y in ds.take(FIRST // 8) for i in np.argmax(y.numpy(), axis=1)]
    assert _skew(first) <= MAX_SKEW, first

    # The bound catches the CSV's order: kept (--noshuffle), the first records are one class.
    _prepare(csv_path, tmp_path / "sorted", "--noshuffle", "--num_shards=1", "--num_workers=1")
    assert _skew(_file_order_labels(tmp_path / "sorted")[:FIRST]) > MAX_SKEW

    # Another seed, another order; the same seed, the same bytes.
    _prepare(csv_path, tmp_path / "seed1", "--seed=1", "--num_shards=4", "--num_workers=1")
    _prepare(csv_path, tmp_path / "seed1_again", "--seed=1", "--num_shards=4", "--num_workers=1")
    _prepare(csv_path, tmp_path / "seed0", "--num_shards=4", "--num_workers=1")
    read = {name: [Path(f).read_bytes() for f in resolve_files(tmp_path / name)]
            for name in ("seed1", "seed1_again", "seed0")}
    assert read["seed1"] == read["seed1_again"] and read["seed1"] != read["seed0"]


def test_one_and_two_worker_processes_write_the_same_shards(tmp_path):
    csv_path = _sorted_csv(tmp_path / "videos", per_class=6)
    (tmp_path / "videos" / "bad.mp4").write_text("not a video\n")
    with open(csv_path, "a") as f:
        f.write("bad.mp4,1,bad\nmissing.mp4,2,missing\n")
    for workers in (1, 2):
        _prepare(csv_path, tmp_path / f"w{workers}", f"--num_workers={workers}", "--num_shards=3")
    one, two = (sorted(p.name for p in (tmp_path / f"w{w}").iterdir()) for w in (1, 2))
    assert one == two == ["train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
                          "train-00002-of-00003.tfrecord", "train-summary.json"]
    for name in one:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    summary = json.loads((tmp_path / "w2" / "train-summary.json").read_text())
    assert summary["num_examples"] == 24 and summary["skipped_counts"] == {"video": 2, "audio": 0, "flow": 0}


def test_default_shards_and_workers_follow_the_documented_rules(monkeypatch):
    assert [prepare_lib.default_num_shards(n) for n in (0, 1, 3, 64, 1000)] == [1, 1, 3, 64, 64]
    monkeypatch.setattr(prepare_lib, "usable_cpus", lambda: 8)
    per = prepare_lib.VIDEOS_PER_WORKER
    assert [prepare_lib.default_num_workers(n) for n in (1, per, 3 * per, 100 * per)] == [1, 1, 3, 8]


def test_an_interrupted_prepare_leaves_no_shard(tmp_path, monkeypatch):
    csv_path = _sorted_csv(tmp_path / "videos", per_class=2)
    real, calls = prepare_lib._prepare_row, collections.Counter()

    def interrupted(row, opts, quality):
        calls["rows"] += 1
        if calls["rows"] == 5:
            raise KeyboardInterrupt
        return real(row, opts, quality)

    monkeypatch.setattr(prepare_lib, "_prepare_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_lib.prepare(csv_path, tmp_path / "out", num_workers=1, num_shards=2, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def _spawned_workers(parent: int) -> list[int]:
    """Pids of the multiprocessing workers `parent` spawned (not its resource tracker)."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_worker_fails_the_run_and_leaves_no_shard(tmp_path):
    csv_path = _sorted_csv(tmp_path / "videos", per_class=8)
    out, failure = tmp_path / "out", []

    def run():
        try:
            prepare_lib.prepare(csv_path, out, num_workers=2, min_resize=None, progress=False)
        except Exception as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not (workers := _spawned_workers(os.getpid())) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert workers, "no worker process appeared"
    os.kill(workers[0], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive() and len(failure) == 1
    assert isinstance(failure[0], DataError) and "a worker process of `mtv data prepare` died" in str(failure[0])
    assert "--num_workers=1" in str(failure[0])
    assert list(out.iterdir()) == []  # the hidden temporaries are gone too
