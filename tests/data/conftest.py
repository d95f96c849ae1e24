"""Fixtures of the mtv.data tests."""

from __future__ import annotations

import pytest

from mtv.data.video import read_video
from tests.data.synthetic import REAL_CLIPS


@pytest.fixture(scope="session")
def real_videos(videos_dir):
    """Every real clip decoded once per session: {file name: Video}."""
    return {name: read_video(videos_dir / name) for name in REAL_CLIPS}
