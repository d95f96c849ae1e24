"""One run of examples/epic_entry.py per test session, shared by tests/test_examples.py and notebook 03's test.

The two test files may run in different pytest-xdist workers, so the run lives in the session's common temp
folder (the parent of a worker's own), made by whichever worker asks first while the other waits on a lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require_shared

SCRIPT = REPO / "examples" / "epic_entry.py"
TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class EntryRun:
    """What the script printed and where it wrote; `report` is its JSON line (None when it failed)."""

    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    seconds: float
    report: dict | None


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder every worker of this session shares (xdist gives each worker a subfolder of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _run(workdir: Path, shared: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), f"--workdir={workdir}", f"--videos={shared / 'data' / 'videos'}",
         f"--epic_dir={shared / 'data' / 'epic_kitchens'}"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
            "seconds": time.perf_counter() - start}


def _report(stdout: str) -> dict | None:
    try:
        return json.loads(stdout.splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None


def epic_entry_run(tmp_path_factory: pytest.TempPathFactory) -> EntryRun:
    """Runs the example as a user does (a subprocess, the real clips and Epic CSVs) once per session."""
    shared = require_shared()
    root = _session_dir(tmp_path_factory)
    workdir, record = root / "epic_entry", root / "epic_entry.json"
    with open(root / "epic_entry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():  # a failed run is recorded too: the other file's tests report it, not rerun it
            done = _run(workdir, shared)
            record.with_suffix(".tmp").write_text(json.dumps(done))
            record.with_suffix(".tmp").replace(record)
        done = json.loads(record.read_text())
    report = _report(done["stdout"]) if done["returncode"] == 0 else None
    if report is None:
        pytest.fail(f"examples/epic_entry.py failed (exit status {done['returncode']}) or printed no JSON line:\n"
                    f"{done['stderr'][-6000:]}\nstdout: {done['stdout'][-2000:]}")
    return EntryRun(done["returncode"], done["stdout"], done["stderr"], workdir, done["seconds"], report)
