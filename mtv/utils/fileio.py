"""Atomic file and directory writes, and the inter-process file lock: every cache, checkpoint, results
file, preset and export goes through here."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock

from mtv.errors import WriteError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is synced and renamed to `path`, on error deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is a rename; the leading dot keeps it out of globs such as checkpoint_*.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary shareable files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yields a temporary directory beside `path`; on success it is renamed to `path`, on error deleted.

    An existing empty `path` is replaced; a non-empty one only with `replace=True` (else FileExistsError),
    swapped out through a hidden `.old` sibling so that `path` is never half written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; these are ordinary shareable directories
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if not path.exists():
            os.replace(tmp, path)
        elif not replace:
            raise FileExistsError(f"'{path}' exists and is not empty")
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive inter-process lock on the lock file `path` (created if missing) for the block.

    Built on `filelock`, so it works on every OS; threads of one process exclude each other too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path)):
        yield


def write_error(path: str | os.PathLike, error: BaseException) -> WriteError:
    """A WriteError for an OS (or TensorFlow file-system) error raised while writing `path`: which path, what to do."""
    code = getattr(error, "errno", None)
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    full = "no space left" in str(error).lower() or "ResourceExhausted" in type(error).__name__
    if code == errno.ENOSPC or full:
        return WriteError(f"no space left on device while writing {path}; nothing partial was kept. Free some space "
                          "or choose an output on another disk")
    blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
    if code in (errno.ENOTDIR, errno.EEXIST) and blocker is not None or isinstance(error, NotADirectoryError):
        where = f" ({blocker})" if blocker is not None else ""
        return WriteError(f"cannot write {path}: a parent of it{where} is a file, not a directory ({text}); "
                          "choose another output path")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"cannot write {path}: {text} (not writable by you); choose a writable output path")
    return WriteError(f"cannot write {path}: {text}; check the path and its disk")


def _is_fs_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or type(error).__module__.startswith("tensorflow")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turns an OSError (or a TensorFlow file-system error) raised in the block into a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        if not _is_fs_error(e):
            raise
        raise write_error(path, e) from None
