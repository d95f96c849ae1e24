"""The cache: extraction keyed by URL and content, no poisoning, read-only and full disks, `mtv cache`."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import mtv
from mtv.cli import run
from mtv.errors import DownloadError
from mtv.io import download
from mtv.io.download import cache_dir, fetch
from tests.helpers import RouteServer

REPO = Path(__file__).resolve().parents[1]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _preset_tarball(tag: str, padding: int = 200_000) -> bytes:
    """A gzipped tar of a stand-in preset (config.json naming `tag`; load_preset is stubbed in these tests)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("config.json", json.dumps({"tag": tag}).encode()),
                           ("weights.msgpack", os.urandom(padding))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server():
    s = RouteServer()
    yield s
    s.stop()


@pytest.fixture
def stub_presets(monkeypatch):
    """load_preset returns the stand-in preset's config.json (no model is built)."""
    from mtv.io import presets

    monkeypatch.setattr(presets, "load_preset", lambda d, **k: json.loads((Path(d) / "config.json").read_text()))


def _extractions() -> list[Path]:
    return [p for p in (cache_dir() / "extracted").glob("*/*") if p.is_dir()]


def _debris() -> list[Path]:
    return [p for p in cache_dir().rglob("*") if re.search(r"\.(tmp|old)$|\.tmp\d+$", p.name)]


# ------------------------------------------------------------------------------------- 1. keying


def test_two_urls_with_the_same_file_name_are_extracted_apart(server, stub_presets):
    server.routes["/a/model.tar.gz"] = {"body": _preset_tarball("a")}
    server.routes["/b/model.tar.gz"] = {"body": _preset_tarball("b")}
    assert mtv.load(server.url("/a/model.tar.gz")) == {"tag": "a"}
    assert mtv.load(server.url("/b/model.tar.gz")) == {"tag": "b"}


def test_a_changed_upstream_tarball_is_extracted_again(server, stub_presets):
    url = server.url("/model.tar.gz")
    server.routes["/model.tar.gz"] = {"body": _preset_tarball("old")}
    assert mtv.load(url) == {"tag": "old"}
    new = _preset_tarball("new")
    server.routes["/model.tar.gz"] = {"body": new}
    assert mtv.load(url, sha256=_sha(new)) == {"tag": "new"}
    assert len(_extractions()) == 1  # the old extraction was dropped


def test_load_checks_an_expected_sha256(server, stub_presets):
    body = _preset_tarball("a")
    server.routes["/m.tar.gz"] = {"body": body}
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        mtv.load(server.url("/m.tar.gz"), sha256="0" * 64)
    assert mtv.load(server.url("/m.tar.gz"), sha256=_sha(body)) == {"tag": "a"}


# ------------------------------------------------------------------------------ 2. lock and debris


def test_two_processes_loading_the_same_tarball_url_both_succeed(server):
    server.routes["/slow.tar.gz"] = {"body": _preset_tarball("a", 600_000), "pieces": 10, "delay": 0.05}
    code = ("import json, sys, pathlib\nfrom mtv.io import loading, presets\n"
            "presets.load_preset = lambda d, **k: json.loads((pathlib.Path(d) / 'config.json').read_text())\n"
            "print(loading.load(sys.argv[1]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, server.url("/slow.tar.gz")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert "'tag': 'a'" in out
    assert server.hits["/slow.tar.gz"] == 1
    assert _debris() == []


def test_a_truncated_tarball_is_a_named_error_that_says_it_was_removed(server, stub_presets):
    body = _preset_tarball("a")
    url = server.url("/m.tar.gz")
    server.routes["/m.tar.gz"] = {"body": body, "cut": len(body) // 2, "length": False}  # ends early, no length
    for _ in range(2):  # the same clear error on a retry, not a raw EOFError
        with pytest.raises(DownloadError, match="truncated or corrupt") as info:
            mtv.load(url)
        assert "removed from the cache" in str(info.value) and url in str(info.value)
    assert download.recorded_sha256(url) is None  # nothing trusted
    assert not list((cache_dir() / "downloads").rglob("m.tar.gz"))
    assert _debris() == []
    server.routes["/m.tar.gz"] = {"body": body}  # the correct file is then accepted
    assert mtv.load(url) == {"tag": "a"}


def test_extraction_out_of_space_says_so_and_leaves_no_debris(server, stub_presets, monkeypatch):
    server.routes["/m.tar.gz"] = {"body": _preset_tarball("a")}

    def full(self, path, *args, **kwargs):
        (Path(path) / "config.json").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(DownloadError, match="no space left on device while writing .*extracted"):
        mtv.load(server.url("/m.tar.gz"))
    assert _debris() == []
    assert not _extractions()


def test_stale_temporary_debris_is_cleaned_up_on_the_next_write(server):
    server.routes["/x"] = {"body": b"x" * 1000}
    folder = cache_dir() / "downloads" / _sha(server.url("/x").encode())[:16]
    folder.mkdir(parents=True)
    stale, fresh, old_style = folder / ".x.abc.tmp", folder / ".x.def.tmp", folder / "model.tmp4242"
    for p in (stale, fresh, old_style):
        p.mkdir()
        (p / "junk").write_bytes(b"0" * 100)
    hour_ago = time.time() - 3600
    for p in (stale, old_style):
        os.utime(p, (hour_ago, hour_ago))
    fetch(server.url("/x"), progress=False)
    assert not stale.exists() and not old_style.exists()
    assert fresh.exists()  # maybe another process's write in progress


# --------------------------------------------------------------------------------- 3. poisoning


def test_fetch_with_a_wrong_sha256_keeps_the_good_cached_copy(server):
    server.routes["/a"] = {"body": b"good" * 1000}
    url = server.url("/a")
    path = fetch(url, progress=False)
    with pytest.raises(DownloadError, match="was kept"):
        fetch(url, sha256="0" * 64, progress=False)
    assert path.read_bytes() == b"good" * 1000
    assert fetch(url, progress=False) == path


def test_a_poisoned_cache_entry_is_removed_and_fetched_again(server, stub_presets, caplog):
    body = _preset_tarball("a")
    url = server.url("/m.tar.gz")
    server.routes["/m.tar.gz"] = {"body": body, "cut": len(body) // 2, "length": False}
    fetch(url, progress=False)  # as an older mtv did: a short download cached and its hash trusted
    assert download.recorded_sha256(url) is not None
    server.routes["/m.tar.gz"] = {"body": body}
    with caplog.at_level("WARNING"):
        assert mtv.load(url) == {"tag": "a"}
    assert "removed and is downloaded again" in caplog.text
    assert download.recorded_sha256(url) == _sha(body)


# ------------------------------------------------------------------------ 4. read-only, full disk


def _simulate_read_only(root: Path, monkeypatch) -> list[str]:
    """Makes every write under `root` fail with EROFS (tests run as root, which ignores chmod); returns the
    list of attempted writes."""
    root = root.resolve()
    attempts: list[str] = []

    def inside(path) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError, OSError):
            return False

    def refuse(path):
        attempts.append(str(path))
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_os_open, real_open = os.open, builtins.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, *args, **kwargs):
        if flags & write_flags and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def py_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guard(real):
        def wrapped(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    for name in ("mkdir", "unlink", "remove", "rmdir", "replace", "rename", "chmod", "utime"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    return attempts


def test_a_populated_read_only_cache_is_used_without_writing(server, stub_presets, monkeypatch):
    server.routes["/m.tar.gz"] = {"body": _preset_tarball("a")}
    server.routes["/ckpt"] = {"body": b"c" * 5000}
    assert mtv.load(server.url("/m.tar.gz")) == {"tag": "a"}
    path = fetch(server.url("/ckpt"), progress=False)
    server.stop()
    subprocess.run(["chmod", "-R", "a-w", str(cache_dir())], check=True)  # as a shared cache would be
    try:
        attempts = _simulate_read_only(cache_dir(), monkeypatch)
        assert mtv.load(server.url("/m.tar.gz")) == {"tag": "a"}
        assert fetch(server.url("/ckpt"), progress=False) == path
        assert attempts == []  # not even a lock file was opened for writing
        with pytest.raises(DownloadError, match="not writable by you.*Set MTV_CACHE_DIR to a writable"):
            fetch(server.url("/not-cached"), progress=False)
        assert attempts
    finally:
        monkeypatch.undo()
        subprocess.run(["chmod", "-R", "u+w", str(cache_dir())], check=True)


def test_cache_dir_pointing_at_a_file_is_a_named_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    for value in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        monkeypatch.setenv("MTV_CACHE_DIR", str(value))
        with pytest.raises(DownloadError, match=rf"{value} \(MTV_CACHE_DIR=.*is not a directory.*Point MTV_CACHE_DIR"):
            cache_dir()
    assert run(["cache", "list"]) == 1
    assert "mtv cache: error:" in capsys.readouterr().err


def test_an_unwritable_cache_dir_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MTV_CACHE_DIR", str(tmp_path / "ro" / "cache"))
    _simulate_read_only(tmp_path / "ro", monkeypatch)
    with pytest.raises(DownloadError, match=r"cannot write .*ro/cache.*Set MTV_CACHE_DIR to a writable directory"):
        cache_dir()


def test_a_full_disk_while_downloading_says_no_space_left(server, monkeypatch):
    server.routes["/big"] = {"body": b"b" * 300_000}

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open", lambda *a, **k: Full(), raising=False)
    with pytest.raises(DownloadError, match=r"no space left on device while writing .*big") as info:
        fetch(server.url("/big"), progress=False)
    assert "network" not in str(info.value) and "could not download" not in str(info.value)
    monkeypatch.undo()
    assert _debris() == []
    assert download.recorded_sha256(server.url("/big")) is None


# ------------------------------------------------------------------------------------ `mtv cache`


def test_mtv_cache_lists_verifies_and_clears(server, stub_presets, capsys):
    tar_url, ckpt_url = server.url("/m.tar.gz"), server.url("/ckpt")
    server.routes["/m.tar.gz"] = {"body": _preset_tarball("a")}
    server.routes["/ckpt"] = {"body": b"c" * 5000}
    mtv.load(tar_url)
    ckpt = fetch(ckpt_url, progress=False)
    capsys.readouterr()
    assert run(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert tar_url in out and ckpt_url in out and "extracted" in out and str(cache_dir()) in out
    assert run(["cache", "list", "--json"]) == 0
    kinds = sorted(e["kind"] for e in json.loads(capsys.readouterr().out))
    assert kinds == ["download", "download", "extracted"]
    assert run(["cache", "verify"]) == 0
    assert "the cache is intact" in capsys.readouterr().out
    with open(ckpt, "r+b") as f:  # bit rot with the same size
        f.write(b"X")
    assert run(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and ckpt_url in out and f"mtv cache clear {ckpt_url}" in out
    assert run(["cache", "clear", tar_url]) == 0
    assert download.recorded_sha256(tar_url) is None
    assert not _extractions()
    assert [e.name for e in download.cache_entries()] == [ckpt_url]
    assert run(["cache", "clear", "no-such-model"]) == 1
    assert "nothing in the cache" in capsys.readouterr().err
    assert run(["cache", "clear", "--all"]) == 0
    assert download.cache_entries() == [] and not (cache_dir() / "hashes.json").exists()
    assert run(["cache", "clear"]) == 2
    assert run(["cache", "frob"]) == 2
