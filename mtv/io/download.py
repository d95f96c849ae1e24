"""The download cache: atomic, locked, sha256-checked downloads, and safe tar extraction."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from absl import logging

from mtv.errors import DownloadError, MTVError
from mtv.utils.fileio import atomic_path, atomic_write_text, file_lock

CACHE_ENV = "MTV_CACHE_DIR"
HASHES_FILE = "hashes.json"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
STALE_TEMP_S = 30 * 60  # temp files/dirs older than this are debris of a killed process, removed on the next write
_TEMP_NAME = re.compile(r"^\..*\.(tmp|old)$|\.tmp\d+$")
_LOCAL_HINT = (
    "To use a checkpoint you already have, load it from the local file instead: "
    "mtv.load('/path/to/checkpoint_N') or `mtv zoo fetch NAME --from_file PATH`."
)


def cache_write_error(path: str | os.PathLike, error: OSError) -> DownloadError:
    """A DownloadError for an OSError raised while writing `path` in the cache: which path, and what to do."""
    if error.errno == errno.ENOSPC:
        return DownloadError(f"no space left on device while writing {path}; nothing partial was kept. Free some "
                             f"space on that disk, or set {CACHE_ENV} to a directory on a disk with room")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DownloadError(
            f"cannot write {path}: {error.strerror or error} (the mtv cache is read-only or not writable by you). "
            f"Set {CACHE_ENV} to a writable directory; a read-only shared cache can only serve what it already "
            "holds")
    return DownloadError(f"cannot write {path}: {error}. Check that disk, or set {CACHE_ENV} to another directory")


@contextlib.contextmanager
def cache_writes(path: str | os.PathLike) -> Iterator[None]:
    """Turns an OSError raised in the block (writing `path` in the cache) into a DownloadError naming it."""
    try:
        yield
    except OSError as e:
        raise cache_write_error(path, e) from None


def cache_dir(*, create: bool = True) -> Path:
    """The cache root: $MTV_CACHE_DIR, else ~/.cache/mtv (created if missing, unless `create=False`)."""
    raw = os.environ.get(CACHE_ENV)
    path = Path(raw or "~/.cache/mtv").expanduser()
    if path.is_dir():  # never written to when it exists: a read-only shared cache must work
        return path
    source = f"{CACHE_ENV}={raw}" if raw else f"the default cache (set {CACHE_ENV} to choose another)"
    not_a_dir = DownloadError(f"the mtv cache directory {path} ({source}) is not a directory: it or one of its "
                              f"parents is a file. Point {CACHE_ENV} at a directory, or move that file away")
    if path.exists() or any(p.exists() and not p.is_dir() for p in path.parents):
        raise not_a_dir
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise not_a_dir from None
        except OSError as e:
            raise cache_write_error(path, e) from None
    return path


def remove_stale_temporaries(directory: str | os.PathLike, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Removes temp files/dirs (`.NAME.XXXX.tmp`, `NAME.tmpPID`) older than `max_age_s` in `directory`."""
    removed = []
    cutoff = time.time() - max_age_s
    try:
        candidates = [p for p in Path(directory).iterdir() if _TEMP_NAME.search(p.name)]
    except OSError:
        return removed
    for p in candidates:
        try:
            if p.lstat().st_mtime > cutoff:
                continue  # possibly another process's write in progress
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


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


def _record_sha256(url: str, digest: str | None) -> None:
    """Records (or, with digest None, forgets) the trusted sha256 of `url`; writes only when it changes."""
    path = _hashes_path()
    if _read_hashes().get(url) == digest:
        return
    with cache_writes(path), file_lock(path.with_name(path.name + ".lock")):  # read-modify-write across processes
        hashes = _read_hashes()
        if hashes.get(url) != digest:
            if digest is None:
                hashes.pop(url, None)
            else:
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


def url_key(url: str) -> str:
    """The cache folder name of `url` (under downloads/ and extracted/): 16 hex digits of its sha256."""
    return hashlib.sha256(str(url).encode()).hexdigest()[:16]


def _target_path(url: str, name: str | None) -> Path:
    root = cache_dir() / "downloads"
    if name is None:
        base = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
        # One folder per URL: two URLs with the same basename (mirrors, versions) must not share a
        # file, and the basename (with its .tar.gz etc.) is kept for callers that look at it.
        name = f"{url_key(url)}/{base}"
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DownloadError(f"cache name must be a relative path without '..', got {name!r}")
    return root.joinpath(*rel.parts)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _write_stamp(target: Path, digest: str, url: str | None = None) -> None:
    st = target.stat()
    stamp = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "url": url}
    atomic_write_text(_stamp_path(target), json.dumps(stamp) + "\n")


def _read_stamp(target: Path) -> dict:
    try:
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def cached_sha256(target: str | os.PathLike) -> str:
    """The sha256 of a cached file, from its stamp when size and mtime still match, else rehashed."""
    target = Path(target)
    stamp = _read_stamp(target)
    st = target.stat()
    if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns and stamp.get("sha256"):
        return stamp["sha256"]
    digest = sha256_file(target)
    if cache_dir(create=False).resolve() in target.resolve().parents:  # never beside a user's own file
        try:  # only a speed-up: a read-only cache simply rehashes next time
            _write_stamp(target, digest, stamp.get("url"))
        except OSError:
            pass
    return digest


_cached_digest = cached_sha256


def _network_error(url: str, reason: object) -> DownloadError:
    return DownloadError(f"could not download {url}: {reason}. {_LOCAL_HINT}")


def _stream(url: str, out: BinaryIO, target: Path, progress: bool) -> tuple[str, int, int | None]:
    """Copies the body of `url` into `out`; returns (sha256, bytes received, Content-Length)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received, total = 0, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mtv-download"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=not progress, file=sys.stderr, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as e:  # the disk, not the network: say so
                        raise cache_write_error(target, e) from None
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
    """Streams `url` into a temp file beside `target`, checks it, then renames it into place.

    On any failure `target` is left as it was: a good cached copy is never lost to a bad download.
    """
    kept = (f" The cached copy {target} was kept." if target.exists() else " Nothing was cached.")
    with cache_writes(target), atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            actual, received, total = _stream(url, out, target, progress)
            out.flush()
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was truncated: received {received} of {total} bytes "
                f"(Content-Length); the partial file was deleted.{kept} Try again, or use a local file. "
                + _LOCAL_HINT)
        if expected is not None and actual != expected:
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {expected}, got {actual}; the downloaded file was "
                f"deleted.{kept} If the upstream file was replaced on purpose, run `mtv cache clear {url}` "
                f"(or remove its entry from {_hashes_path()}, or fix the registry's sha256) and fetch again.")
    return actual


def is_cached(url: str, *, name: str | None = None) -> bool:
    """True when a download of `url` (under `name`) is already in the cache (checked or not)."""
    return _local_path(str(url)) is None and _target_path(str(url), name).is_file()


def fetch(url: str, *, sha256: str | None = None, name: str | None = None, progress: bool = True,
          trust: bool = True) -> Path:
    """Returns a local path for `url`, downloading it into the cache once and checking its sha256.

    Without `sha256`, the hash of the first complete download is recorded and later ones must match it
    (trust on first use). `trust=False` defers that record to `trust_download`, for callers that first
    check that the file parses. A cache that already holds a matching copy is only read, never written.
    """
    url = str(url)
    sha256 = _normalise_sha(sha256)
    local = _local_path(url)
    if local is not None:
        return _fetch_local(local, sha256)
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme in {url!r}; expected http(s)://, file:// or a path")
    target = _target_path(url, name)
    if _reuse(url, target, sha256, trust):  # no lock, no write: works on a read-only shared cache
        return target
    with cache_writes(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.with_name(target.name + ".lock")):
            if _reuse(url, target, sha256, trust):  # another process fetched it while we waited
                return target
            remove_stale_temporaries(target.parent)
            expected = sha256 or recorded_sha256(url)
            if target.exists():
                logging.warning("cached %s does not match sha256 %s; downloading it again", target, expected)
            logging.info("downloading %s -> %s", url, target)
            digest = _download(url, target, expected, progress)
            _write_stamp(target, digest, url)
            if trust:
                _record_sha256(url, digest)
            return target


def _reuse(url: str, target: Path, sha256: str | None, trust: bool) -> bool:
    """True when the cached `target` matches the expected (or recorded) sha256; records it if `trust`."""
    if not target.is_file():
        return False
    recorded = recorded_sha256(url)
    expected = sha256 or recorded
    digest = cached_sha256(target)
    if expected is not None and digest != expected:
        return False
    if trust and recorded != digest:
        _record_sha256(url, digest)
    return True


def trust_download(url: str, path: str | os.PathLike) -> None:
    """Records the sha256 of the cached download `path` of `url` as trusted, once it has parsed/loaded."""
    if _local_path(str(url)) is None:
        _record_sha256(str(url), cached_sha256(path))


def discard_download(url: str, path: str | os.PathLike) -> None:
    """Removes a cached download of `url` that failed to parse, and the recorded sha256 if it was that file's."""
    url, path = str(url), Path(path)
    if _local_path(url) is not None or not path.exists():  # a user's own file is never deleted
        return
    digest = cached_sha256(path)
    with cache_writes(path), file_lock(path.with_name(path.name + ".lock")):
        path.unlink(missing_ok=True)
        _stamp_path(path).unlink(missing_ok=True)
    if recorded_sha256(url) == digest:
        _record_sha256(url, None)


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
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise error(f"cannot open tar archive {archive}: {e}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise error(f"tar archive {archive} is truncated or corrupt: {type(e).__name__}: {e}") from None
        for member in members:
            _check_member(member, root, str(archive), error)
        try:
            # Second line of defence (permissions, special bits) from the stdlib's own filter.
            tar.extractall(root, members=members, filter="data")
        except OSError as e:
            if e.errno is not None:  # the disk (full, read-only), not the archive
                raise cache_write_error(root, e) from None
            raise error(f"tar archive {archive} is truncated or corrupt: {e}") from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise error(f"tar archive {archive} is truncated or corrupt: {type(e).__name__}: {e}") from None
    return dest


# ------------------------------------------------------------------------------------- `mtv cache`

_SUBDIRS = ("downloads", "extracted", "presets")


class CacheEntry(NamedTuple):
    """One thing in the cache: a download, an extracted archive or a converted zoo preset."""

    kind: str  # "download", "extracted" or "preset"
    name: str  # the URL (downloads, extractions), the zoo model name (presets) or the path in the cache
    path: Path
    size: int


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _is_bookkeeping(path: Path) -> bool:
    return path.name.endswith((".lock", ".sha256")) or bool(_TEMP_NAME.search(path.name))


def cache_entries() -> list[CacheEntry]:
    """Everything in the cache (downloads, extracted archives, presets), without writing to it."""
    root = cache_dir(create=False)
    entries: list[CacheEntry] = []
    urls: dict[str, str] = {}  # url_key -> URL, to name extractions
    downloads = root / "downloads"
    if downloads.is_dir():
        for path in sorted(downloads.rglob("*")):
            if not path.is_file() or _is_bookkeeping(path) or any(_TEMP_NAME.search(p) for p in path.parts):
                continue
            url = _read_stamp(path).get("url")
            rel = path.relative_to(downloads).as_posix()
            if url:
                urls[rel.split("/")[0]] = url
            entries.append(CacheEntry("download", url or rel, path, path.stat().st_size))
    extracted = root / "extracted"
    if extracted.is_dir():
        for path in sorted(extracted.glob("*/*")):
            if path.is_dir() and not _is_bookkeeping(path):
                key = path.parent.name
                entries.append(CacheEntry("extracted", urls.get(key, f"{key}/{path.name}"), path, _tree_size(path)))
    presets = root / "presets"
    if presets.is_dir():
        for path in sorted(presets.iterdir()):
            if path.is_dir() and not _is_bookkeeping(path):
                entries.append(CacheEntry("preset", path.name, path, _tree_size(path)))
    return entries


def stale_temporaries() -> list[Path]:
    """Temp files and folders left in the cache by interrupted writes."""
    root = cache_dir(create=False)
    return sorted(p for sub in _SUBDIRS if (root / sub).is_dir()
                  for p in (root / sub).rglob("*") if _TEMP_NAME.search(p.name))


def verify_entry(entry: CacheEntry) -> str | None:
    """None when `entry` is intact, else what is wrong with it (reads only)."""
    if entry.kind == "download":
        actual = sha256_file(entry.path)
        stamp = _read_stamp(entry.path).get("sha256")
        url = _read_stamp(entry.path).get("url")
        recorded = recorded_sha256(url) if url else None
        if stamp and actual != stamp:
            return f"sha256 {actual} differs from the {stamp} it had when downloaded (corrupted on disk)"
        if recorded and actual != recorded:
            return f"sha256 {actual} differs from the {recorded} recorded for {url}"
        return None
    if entry.kind == "preset":
        from mtv.io.presets import is_current_preset, read_preset_config

        if not is_current_preset(entry.path):
            return "not a complete preset of the current format (it is converted again on the next load)"
        try:
            read_preset_config(entry.path)
        except MTVError as e:
            return str(e)
        return None
    if not any(entry.path.iterdir()):
        return "empty extraction"
    return None


def _matches(entry: CacheEntry, name: str, root: Path) -> bool:
    parts = entry.path.relative_to(root).parts  # ("downloads", KEY or MODEL, ...), ("presets", MODEL), ...
    keys = {name, url_key(name)} if "://" in name else {name}
    return name in (entry.name, "/".join(parts), str(entry.path)) or parts[1] in keys


def clear_cache(name: str | None = None) -> list[Path]:
    """Removes the entries named `name` (URL, zoo model name, or path in the cache), or everything with None."""
    root = cache_dir(create=False)
    if not root.is_dir():
        return []
    if name is None:
        targets = [root / sub for sub in _SUBDIRS if (root / sub).exists()]
        targets += [p for p in (root / HASHES_FILE, root / (HASHES_FILE + ".lock")) if p.exists()]
    else:
        targets = [e.path for e in cache_entries() if _matches(e, name, root)]
        if not targets and recorded_sha256(name) is None:
            raise DownloadError(f"nothing in the cache {root} is named {name!r}; `mtv cache list` shows what is "
                                "there (names are URLs, zoo model names or paths in the cache)")
    removed = []
    with cache_writes(root):
        for path in targets:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
                _stamp_path(path).unlink(missing_ok=True)
            removed.append(path)
        if name is not None and recorded_sha256(name) is not None:
            _record_sha256(name, None)  # a URL: forget its trusted hash too, so a replaced upstream file is accepted
    return removed
