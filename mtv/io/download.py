"""The download cache: atomic, locked, sha256-checked downloads, and safe tar extraction."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from absl import logging

from mtv.errors import DownloadError, MTVError
from mtv.utils.fileio import atomic_path, atomic_write_text, file_lock

CACHE_ENV = "MTV_CACHE_DIR"
HASHES_FILE = "hashes.json"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_LOCAL_HINT = (
    "To use a checkpoint you already have, load it from the local file instead: "
    "mtv.load('/path/to/checkpoint_N') or `mtv zoo fetch NAME --from_file PATH`."
)


def cache_dir() -> Path:
    """The cache root: $MTV_CACHE_DIR, else ~/.cache/mtv (created if missing)."""
    path = Path(os.environ.get(CACHE_ENV) or "~/.cache/mtv").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hashes_path() -> Path:
    return cache_dir() / HASHES_FILE


def _read_hashes() -> dict[str, str]:
    path = _hashes_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(f"{path} is unreadable ({e}); delete it to start a fresh hash record") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: expected a JSON object {{url: sha256}}; delete it to start afresh")
    return data


def recorded_sha256(url: str) -> str | None:
    """The sha256 recorded for `url` on its first download, if any."""
    return _read_hashes().get(url)


def _record_sha256(url: str, digest: str) -> None:
    path = _hashes_path()
    with file_lock(path.with_name(path.name + ".lock")):  # read-modify-write across processes
        hashes = _read_hashes()
        if hashes.get(url) != digest:
            hashes[url] = digest
            atomic_write_text(path, json.dumps(hashes, indent=2, sort_keys=True) + "\n")


def _normalise_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DownloadError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if "://" not in url:
        return Path(url).expanduser()
    return None


def _fetch_local(path: Path, sha256: str | None) -> Path:
    if not path.exists():
        raise DownloadError(f"no such file: {path}")
    if sha256 is not None:
        if path.is_dir():
            raise DownloadError(f"{path} is a directory; a sha256 can only be checked on a file")
        actual = sha256_file(path)
        if actual != sha256:
            # The user's own file is left alone; only downloads are deleted on mismatch.
            raise DownloadError(f"sha256 mismatch for {path}: expected {sha256}, got {actual}")
    return path


def _target_path(url: str, name: str | None) -> Path:
    root = cache_dir() / "downloads"
    if name is None:
        base = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
        # One folder per URL: two URLs with the same basename (mirrors, versions) must not share a
        # file, and the basename (with its .tar.gz etc.) is kept for callers that look at it.
        name = f"{hashlib.sha256(url.encode()).hexdigest()[:16]}/{base}"
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DownloadError(f"cache name must be a relative path without '..', got {name!r}")
    return root.joinpath(*rel.parts)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _write_stamp(target: Path, digest: str) -> None:
    st = target.stat()
    stamp = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    atomic_write_text(_stamp_path(target), json.dumps(stamp) + "\n")


def _cached_digest(target: Path) -> str:
    """The sha256 of a cached file, from its stamp when size and mtime still match, else rehashed."""
    try:
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
        st = target.stat()
        if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
            return stamp["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(target)
    _write_stamp(target, digest)
    return digest


def _network_error(url: str, reason: object) -> DownloadError:
    return DownloadError(f"could not download {url}: {reason}. {_LOCAL_HINT}")


def _stream(url: str, out: BinaryIO, desc: str, progress: bool) -> tuple[str, int, int | None]:
    """Copies the body of `url` into `out`; returns (sha256, bytes received, Content-Length)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received, total = 0, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mtv-download"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      disable=not progress, file=sys.stderr, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise _network_error(url, f"HTTP {e.code} {e.reason}") from None
    except http.client.IncompleteRead as e:
        # The server closed the connection early; reported as truncated by the caller.
        received += len(e.partial)
        total = total if total is not None else received + (e.expected or 1)
    except urllib.error.URLError as e:
        raise _network_error(url, e.reason) from None
    except (OSError, http.client.HTTPException) as e:
        raise _network_error(url, e) from None
    return digest.hexdigest(), received, total


def _download(url: str, target: Path, expected: str | None, progress: bool) -> str:
    """Streams `url` into a temp file beside `target`, checks it, then renames it into place."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            actual, received, total = _stream(url, out, target.name, progress)
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was truncated: received {received} of {total} bytes "
                "(Content-Length); nothing was cached. Try again, or use a local file. " + _LOCAL_HINT)
        if expected is not None and actual != expected:
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {expected}, got {actual}; the downloaded file was "
                f"deleted and nothing was cached. If the upstream file was replaced on purpose, remove its "
                f"entry from {_hashes_path()} (or fix the registry's sha256) and fetch again.")
    return actual


def fetch(url: str, *, sha256: str | None = None, name: str | None = None, progress: bool = True) -> Path:
    """Returns a local path for `url`, downloading it into the cache once and checking its sha256."""
    url = str(url)
    sha256 = _normalise_sha(sha256)
    local = _local_path(url)
    if local is not None:
        return _fetch_local(local, sha256)
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme in {url!r}; expected http(s)://, file:// or a path")
    target = _target_path(url, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        # Trust on first use: a URL without a published hash is pinned to what it served first.
        expected = sha256 or recorded_sha256(url)
        if target.exists():
            digest = _cached_digest(target)
            if expected is None or digest == expected:
                if expected is None:
                    _record_sha256(url, digest)
                return target
            logging.warning("cached %s does not match sha256 %s; downloading it again", target, expected)
            target.unlink()
            _stamp_path(target).unlink(missing_ok=True)
        logging.info("downloading %s -> %s", url, target)
        digest = _download(url, target, expected, progress)
        _write_stamp(target, digest)
        _record_sha256(url, digest)
        return target


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_member(member: tarfile.TarInfo, root: Path, archive: str, error: type[MTVError]) -> None:
    name = member.name
    rel = PurePosixPath(name)
    if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise error(f"refusing to extract {archive}: member '{name}' has an absolute path")
    if ".." in rel.parts or not _within((root / name).resolve(), root):
        raise error(f"refusing to extract {archive}: member '{name}' would be written outside {root}")
    if member.issym():
        link = PurePosixPath(member.linkname)
        target = (root / rel.parent / member.linkname).resolve()
        if link.is_absolute() or not _within(target, root):
            raise error(f"refusing to extract {archive}: symlink '{name}' -> '{member.linkname}' "
                        f"points outside {root}")
    elif member.islnk():
        target = (root / member.linkname).resolve()
        if PurePosixPath(member.linkname).is_absolute() or not _within(target, root):
            raise error(f"refusing to extract {archive}: hard link '{name}' -> '{member.linkname}' "
                        f"points outside {root}")
    elif not (member.isfile() or member.isdir()):
        raise error(f"refusing to extract {archive}: member '{name}' is a device or FIFO")


def safe_extract_tar(
    archive: str | os.PathLike, dest: str | os.PathLike, *, error: type[MTVError] = DownloadError
) -> Path:
    """Extracts a tar archive into `dest`, refusing any member that would land outside it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise error(f"cannot open tar archive {archive}: {e}") from None
    with tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, root, str(archive), error)
        try:
            # Second line of defence (permissions, special bits) from the stdlib's own filter.
            tar.extractall(root, members=members, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise error(f"cannot extract {archive} into {root}: {e}") from None
    return dest
