"""mtv.utils: the shared score arithmetic (softmax, top-k, view averaging) and the atomic writes and file lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mtv.errors import ConfigError
from mtv.utils import numeric
from mtv.utils.fileio import atomic_dir, atomic_path, file_lock


def test_softmax_is_stable_and_normalised():
    x = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    p = numeric.softmax(x)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-12)
    assert p.dtype == np.float64
    np.testing.assert_allclose(numeric.softmax(x[:, :2].T, axis=0), numeric.softmax(x[:, :2]).T)


@pytest.mark.parametrize("k", [1, 5, 8, 9, 40, 100])
def test_top_k_is_a_stable_descending_sort(k):
    # Few distinct values: most rows tie across the top-k boundary, where a plain partition picks arbitrarily.
    scores = np.random.default_rng(k).integers(0, 4, size=(300, 100)).astype(np.float32)
    idx, vals = numeric.top_k(scores, k)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(vals, np.take_along_axis(scores, want, axis=1))


def test_top_k_shapes_and_bad_k():
    idx, vals = numeric.top_k(np.array([0.1, 0.7, 0.2]), 5)  # 1-D, k larger than the class count
    assert idx.tolist() == [1, 2, 0] and vals.tolist() == [0.7, 0.2, 0.1]
    assert numeric.top_k(np.zeros((2, 3, 10)), 4)[0].shape == (2, 3, 4)
    with pytest.raises(ConfigError, match="k >= 1"):
        numeric.top_k(np.zeros((2, 3)), 0)


def test_topk_accuracy_int_and_one_hot_labels():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 0])
    assert numeric.topk_accuracy(scores, labels, 1) == pytest.approx(100 / 3)
    assert numeric.topk_accuracy(scores, np.eye(3)[labels], 2) == pytest.approx(100.0)


def test_average_views_rules():
    logits = np.array([[[4.0, 0.0], [0.0, 1.0]]])  # [N=1, V=2, C=2]
    mean, kind = numeric.average_views(logits, "logits_mean", axis=1)
    assert kind == "logits"
    np.testing.assert_allclose(mean, [[2.0, 0.5]])
    probs, kind = numeric.average_views(logits, "softmax_mean", axis=1)
    assert kind == "probabilities"
    np.testing.assert_allclose(probs, numeric.softmax(logits).mean(axis=1))
    np.testing.assert_allclose(numeric.to_probabilities(mean, "logits"), numeric.softmax([[2.0, 0.5]]))
    with pytest.raises(ConfigError, match="median"):
        numeric.average_views(logits, "median")
    with pytest.raises(ConfigError, match="score kind"):
        numeric.to_probabilities(mean, "votes")


def test_atomic_dir_renames_on_success_and_leaves_nothing_on_error(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    assert (tmp_path / "out" / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "broken") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(FileExistsError, match="not empty"), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "b.txt").write_text("2")
    with atomic_dir(tmp_path / "out", replace=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or .old directory left behind


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_file_lock_excludes_concurrent_holders(tmp_path):
    lock, inside, overlaps = tmp_path / "x.lock", [], []

    def work():
        for _ in range(5):
            with file_lock(lock):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.005)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps


def test_cache_modules_import_without_fcntl():
    # fcntl does not exist on Windows; blocking its import there must not break loading or downloading.
    code = "import sys; sys.modules['fcntl'] = None; import mtv.io.loading, mtv.io.download, mtv.utils.fileio"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
