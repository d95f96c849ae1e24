"""The download cache, against a local HTTP server on 127.0.0.1 started by each test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mtv.errors import DownloadError, ExportError
from mtv.io import download
from mtv.io.download import cache_dir, fetch, safe_extract_tar
from tests.helpers import RouteServer

REPO = Path(__file__).resolve().parents[1]
BODY = os.urandom(300_000)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    s = RouteServer()
    yield s
    s.stop()


def _cached_files() -> list[Path]:
    """Files in the download cache, lock files aside."""
    root = cache_dir() / "downloads"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def _leftovers() -> list[Path]:
    """Temp or partial files left anywhere in the cache."""
    return [p for p in cache_dir().rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MTV_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("MTV_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mtv"


def test_download_then_reuse_without_network(server):
    server.routes["/ckpt/mtv_b_k400"] = {"body": BODY}
    url = server.url("/ckpt/mtv_b_k400")
    path = fetch(url, progress=False)
    assert path.read_bytes() == BODY
    assert path.name == "mtv_b_k400" and cache_dir() in path.parents
    assert json.loads((cache_dir() / "hashes.json").read_text()) == {url: _sha(BODY)}
    server.stop()
    assert fetch(url, progress=False) == path  # the server is gone: served from the cache
    assert server.hits["/ckpt/mtv_b_k400"] == 1
    assert _leftovers() == []


def test_named_download_and_known_sha256(server):
    server.routes["/a"] = {"body": BODY}
    path = fetch(server.url("/a"), sha256=_sha(BODY).upper(), name="zoo/model", progress=True)
    assert path == cache_dir() / "downloads" / "zoo" / "model"
    assert path.read_bytes() == BODY
    with pytest.raises(DownloadError, match="relative path"):
        fetch(server.url("/a"), name="../escape", progress=False)


def test_sha256_mismatch_deletes_the_download(server):
    server.routes["/a"] = {"body": BODY}
    url = server.url("/a")
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        fetch(url, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and _sha(BODY) in message
    assert _cached_files() == []
    assert not (cache_dir() / "hashes.json").exists()
    with pytest.raises(DownloadError, match="64 hex digits"):
        fetch(url, sha256="abc", progress=False)


def test_first_download_pins_the_hash(server):
    server.routes["/a"] = {"body": BODY}
    url = server.url("/a")
    path = fetch(url, progress=False)
    path.unlink()  # force a second download
    server.routes["/a"] = {"body": BODY[::-1]}  # upstream silently changed
    with pytest.raises(DownloadError, match="sha256 mismatch") as info:
        fetch(url, progress=False)
    assert _sha(BODY) in str(info.value) and "hashes.json" in str(info.value)
    assert not path.exists()
    assert download.recorded_sha256(url) == _sha(BODY)


def test_corrupted_cache_file_is_downloaded_again(server):
    server.routes["/a"] = {"body": BODY}
    url = server.url("/a")
    path = fetch(url, progress=False)
    path.write_bytes(b"bit rot")
    assert fetch(url, progress=False).read_bytes() == BODY
    assert server.hits["/a"] == 2


def test_truncated_download_is_rejected(server):
    server.routes["/short"] = {"body": BODY, "length": len(BODY) + 1000}
    url = server.url("/short")
    with pytest.raises(DownloadError, match=rf"truncated: received {len(BODY)} of {len(BODY) + 1000} bytes"):
        fetch(url, progress=False)
    assert _cached_files() == []
    assert download.recorded_sha256(url) is None


def test_server_down_says_which_url_and_what_to_do():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mtv_b_k400"
    with pytest.raises(DownloadError) as info:
        fetch(url, progress=False)
    message = str(info.value)
    assert f"could not download {url}" in message
    assert "refused" in message.lower()
    assert "mtv.load('/path/to/checkpoint_N')" in message and "--from_file" in message


def test_http_error_is_reported(server):
    with pytest.raises(DownloadError, match=r"could not download .*/missing: HTTP 404"):
        fetch(server.url("/missing"), progress=False)


def test_two_processes_fetching_at_once(server):
    server.routes["/slow"] = {"body": BODY, "pieces": 10, "delay": 0.1}  # about one second
    url = server.url("/slow")
    code = "import sys; from mtv.io.download import fetch; print(fetch(sys.argv[1], progress=False))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == BODY
    assert server.hits["/slow"] == 1  # the second process waited on the lock and reused the file
    assert _leftovers() == []


def test_local_paths_and_file_urls(tmp_path):
    local = tmp_path / "checkpoint_7"
    local.write_bytes(BODY)
    assert fetch(str(local)) == local
    assert fetch(local.as_uri(), sha256=_sha(BODY)) == local
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(local.as_uri(), sha256="1" * 64)
    assert local.read_bytes() == BODY  # the user's own file is never deleted
    with pytest.raises(DownloadError, match="no such file"):
        fetch(str(tmp_path / "nope"))
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        fetch("ftp://example.org/x")


# ---------------------------------------------------------------------------------------------- tar


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """Writes a tar of (name, data, symlink target) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_safe_extract_tar_extracts_a_normal_archive(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [("preset/config.json", b"{}", None),
                                             ("preset/weights.h5", b"w", None),
                                             ("preset/latest", None, "weights.h5")])
    dest = safe_extract_tar(archive, tmp_path / "out")
    assert (dest / "preset" / "config.json").read_bytes() == b"{}"
    assert (dest / "preset" / "latest").resolve() == (dest / "preset" / "weights.h5").resolve()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("../evil", b"x", None), r"member '\.\./evil' would be written outside"),
        (("a/../../evil", b"x", None), r"member 'a/\.\./\.\./evil' would be written outside"),
        (("/tmp/evil", b"x", None), r"member '/tmp/evil' has an absolute path"),
        (("link", None, "../../etc"), r"symlink 'link' -> '\.\./\.\./etc' points outside"),
        (("link", None, "/etc/passwd"), r"symlink 'link' -> '/etc/passwd' points outside"),
    ],
)
def test_safe_extract_tar_refuses_escaping_members(tmp_path, member, message):
    archive = _tar(tmp_path / "bad.tar.gz", [("fine.txt", b"ok", None), member])
    dest = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match=message):
        safe_extract_tar(archive, dest)
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (dest / "fine.txt").exists()  # checked before anything is written
    with pytest.raises(ExportError, match=message):
        safe_extract_tar(archive, dest, error=ExportError)


def test_safe_extract_tar_rejects_a_non_archive(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar")
    with pytest.raises(DownloadError, match="cannot open tar archive"):
        safe_extract_tar(tmp_path / "x.tar", tmp_path / "out")
