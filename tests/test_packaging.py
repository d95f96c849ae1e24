"""The wheel is complete: configs, the zoo registry, presets, class names and the sample clip ship inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Build outputs and caches of the checkout are left behind: a stale build/lib would leak deleted files
# into the wheel, and building in a copy leaves the checkout untouched.
_NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                      ".ruff_cache", ".ipynb_checkpoints", "workdir*", ".whl", ".gl")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    src = tmp_path_factory.mktemp("src") / "mtv"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("mtv-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_ships_configs_and_the_zoo_registry(wheel_names):
    assert "mtv/configs/kinetics/k400_mtv_b2_cva.py" in wheel_names
    for config in (REPO / "configs").rglob("*.py"):
        assert f"mtv/configs/{config.relative_to(REPO / 'configs').as_posix()}" in wheel_names
    assert {"mtv/zoo/models.json", "mtv/zoo/README.md"} <= wheel_names


def test_wheel_ships_presets_class_names_and_the_sample(wheel_names):
    for folder in ("embedded", "classnames", "data/samples"):
        files = [p for p in (REPO / "mtv" / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, folder
        for path in files:
            assert f"mtv/{path.relative_to(REPO / 'mtv').as_posix()}" in wheel_names
    assert "mtv/embedded/camera-motion/weights.msgpack" in wheel_names
    assert "mtv/classnames/kinetics400.txt" in wheel_names
    assert "mtv/data/samples/flipping_pancake.mkv" in wheel_names
    assert "mtv/data/samples/SOURCES.md" in wheel_names


def test_wheel_holds_no_tests_or_build_leftovers(wheel_names):
    assert not any(n.startswith(("tests/", "configs/", "zoo/", "build/")) for n in wheel_names)
    assert not any("__pycache__" in n for n in wheel_names)
