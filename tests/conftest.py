"""Shared fixtures: where ../shared is, and a clean cache per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTV_SHARED_DIR", REPO.parent / "shared"))
# The one reason every test that needs ../shared (real videos, Epic CSVs, the Scenic fixture) skips with.
SHARED_MISSING = (f"MTV_SHARED_DIR not found: {SHARED} (the folder of real test videos, Epic-Kitchens CSVs and "
                  "the Scenic fixture; set MTV_SHARED_DIR to it)")
# For test modules whose every test needs ../shared (module-level `pytestmark = needs_shared`).
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)


def require_shared() -> Path:
    """SHARED, or skip the calling test (or fixture) with SHARED_MISSING when the folder is not there."""
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (fixtures, real videos, Epic-Kitchens CSVs); tests skip without it."""
    return require_shared()


@pytest.fixture(scope="session")
def videos_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "videos"


@pytest.fixture(scope="session")
def epic_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "epic_kitchens"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty model cache and hub cache."""
    cache = tmp_path_factory.mktemp("mtv_cache")
    monkeypatch.setenv("MTV_CACHE_DIR", str(cache))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache / "tfhub"))
