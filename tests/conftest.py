"""Shared fixtures: where ../shared is, and a clean cache per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTV_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (fixtures, real videos, Epic-Kitchens CSVs)."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set MTV_SHARED_DIR")
    return SHARED


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
