"""`mtv.load`: one entry point for zoo names, presets, .keras files, Scenic checkpoints and URLs."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import logging

from mtv.errors import CheckpointError, DownloadError, MTVError, ZooError
from mtv.utils.fileio import atomic_dir, file_lock


def preset_cache_dir(name: str) -> Path:
    """Where the converted native preset of zoo model `name` is cached."""
    from mtv.io.download import cache_dir

    return cache_dir() / "presets" / name


def _metadata_for(entry: dict) -> dict:
    from mtv.io import registry as zoo
    meta = {"name": entry["name"], "source": entry.get("url"), "config": entry.get("config"),
            "dataset": entry.get("dataset"), "preprocessing": entry.get("preprocessing"),
            "num_frames": entry.get("num_frames"), "stride": entry.get("stride"),
            "test_views": entry.get("test_views"), "accuracy": entry.get("accuracy")}
    try:
        meta["class_names"] = zoo.class_names(entry["name"])
    except ZooError as e:  # Epic-Kitchens class names cannot be shipped; they come from the user's CSVs
        logging.info("class names of %s not available: %s", entry["name"], e)
        meta["class_names"] = None
    return meta


def fetch_preset(name: str, *, from_file: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Downloads, verifies and converts zoo model `name` once into a cached native preset; returns its dir."""
    from mtv.io import registry as zoo
    from mtv.io.configs import load_config
    from mtv.io.presets import is_current_preset, save_preset
    from mtv.io.scenic import from_scenic

    entry = zoo.get_entry(name)
    if entry["kind"] == "embedded":
        return zoo.embedded_path(entry)
    target = preset_cache_dir(entry["name"])
    # A cached preset of an older format is converted again from the cached checkpoint.
    if is_current_preset(target) and from_file is None:
        return target
    from mtv.io.download import cache_writes

    with cache_writes(target), file_lock(target.with_name(target.name + ".lock")):
        if is_current_preset(target) and from_file is None:  # another process converted it while we waited
            return target
        if from_file is not None:
            checkpoint = Path(from_file)
            if not checkpoint.exists():
                raise ZooError(f"--from_file '{checkpoint}' does not exist")
        else:  # the checkpoint's first-use sha256 is trusted only once it has parsed
            checkpoint = fetch_parsed(entry["url"], _parse_checkpoint, sha256=entry["sha256"],
                                      name=f"{entry['name']}/checkpoint", progress=progress)
        config = load_config(entry["config"])
        model = from_scenic(config, checkpoint, num_classes=None if entry.get("class_splits") else
                            entry.get("num_classes"), class_splits=entry.get("class_splits"),
                            split_names=entry.get("split_names"))
        save_preset(model, target, metadata=_metadata_for(entry))
        logging.info("converted %s into the preset %s", entry["name"], target)
    return target


class Unparsable(Exception):
    """Raised by a `fetch_parsed` parser: the downloaded file is not what it should be (wraps the MTVError)."""

    def __init__(self, error: MTVError):
        super().__init__(str(error))
        self.error = error


def fetch_parsed(url: str, parse: Callable[[Path], Any], *, sha256: str | None = None, name: str | None = None,
                 progress: bool = True) -> Any:
    """`parse(fetch(url))`, where a download that does not parse is never trusted or kept.

    The first-use sha256 of `url` is recorded only after `parse` succeeded. A cached copy that does not parse
    (`parse` raises `Unparsable`) is removed and downloaded once more; a fresh download that does not parse is
    removed, and the error says so.
    """
    from mtv.io import download

    remote = url.startswith(("http://", "https://"))
    from_cache = download.is_cached(url, name=name)
    path = download.fetch(url, sha256=sha256, name=name, progress=progress, trust=False)
    try:
        result = parse(path)
    except Unparsable as e:
        if not remote:
            raise e.error from None
        download.discard_download(url, path)
        if not from_cache:
            raise type(e.error)(f"{e.error}. The file downloaded from {url} was removed from the cache and nothing "
                                "was trusted; check that the URL serves what you expect, then try again") from None
        logging.warning("the cached download of %s does not parse (%s); it was removed and is downloaded again",
                        url, e.error)
        path = download.fetch(url, sha256=sha256, name=name, progress=progress, trust=False)
        try:
            result = parse(path)
        except Unparsable as again:
            download.discard_download(url, path)
            raise type(again.error)(
                f"{again.error}. The cached copy of {url} did not parse either; both were removed from the cache "
                "and nothing was trusted. Check that the URL serves what you expect, then try again") from None
    try:
        download.trust_download(url, path)
    except DownloadError as e:  # a read-only cache: the file is used, its hash just is not recorded
        logging.warning("could not record the sha256 of %s: %s", url, e)
    return result


def _parse_checkpoint(path: Path) -> dict:
    from mtv.io.scenic import load_flat_params

    try:
        return load_flat_params(path)
    except CheckpointError as e:
        raise Unparsable(e) from None


def _parse_keras(path: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise Unparsable(CheckpointError(f"'{path}' is not a readable .keras file (a zip archive): {e}")) from None
    if bad is not None:
        raise Unparsable(CheckpointError(f"'{path}' is a corrupt .keras file: member '{bad}' fails its CRC"))
    return path


def _extract(url: str) -> Callable[[Path], Path]:
    """A `fetch_parsed` parser that extracts a downloaded tarball once, keyed by URL and content hash."""
    from mtv.io import download

    def parse(path: Path) -> Path:
        folder = download.cache_dir() / "extracted" / download.url_key(url)
        dest = folder / download.cached_sha256(path)[:16]
        if dest.is_dir():  # no lock, no write: works on a read-only shared cache
            return dest
        with download.cache_writes(folder):
            folder.mkdir(parents=True, exist_ok=True)
            with file_lock(folder / "extract.lock"):
                if dest.is_dir():  # another process extracted it while we waited
                    return dest
                download.remove_stale_temporaries(folder)
                try:
                    with atomic_dir(dest) as tmp:
                        download.safe_extract_tar(path, tmp)
                except DownloadError as e:
                    if "no space left" in str(e) or "cannot write" in str(e):
                        raise
                    raise Unparsable(e) from None
                for old in folder.iterdir():  # extractions of what the URL served before
                    if old.is_dir() and old != dest and not old.name.startswith("."):
                        shutil.rmtree(old, ignore_errors=True)
        return dest

    return parse


def _load_url(url: str, config, num_classes, sha256: str | None = None):
    from mtv.io.presets import is_preset, load_preset

    name = url.split("?")[0].rstrip("/")
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        dest = fetch_parsed(url, _extract(url), sha256=sha256)
        if is_preset(dest):
            return load_preset(dest, num_classes=num_classes)
        if (dest / "saved_model.pb").exists():
            raise ZooError(f"'{url}' is a SavedModel (serving only): load it with tensorflow_hub.load or "
                           "mtv.io.hub.load_serving, not mtv.load")
        raise ZooError(f"archive '{url}' holds neither an mtv preset nor a SavedModel")
    if url.startswith("file://"):  # the user's own file or folder: loaded in place, never removed
        from mtv.io.download import fetch

        return load(fetch(url, sha256=sha256), config=config, num_classes=num_classes)
    if name.endswith(".keras"):
        return load(fetch_parsed(url, _parse_keras, sha256=sha256), num_classes=num_classes)
    if config is None:
        raise ZooError(f"'{url}' looks like a Scenic checkpoint; pass config=<Scenic config, .py or .json> so the "
                       "model can be built")
    from mtv.io.scenic import from_scenic

    return from_scenic(config, fetch_parsed(url, _parse_checkpoint, sha256=sha256), num_classes=num_classes)


def _load_keras_file(path: Path) -> Any:
    """A `.keras` file loaded by Keras; a corrupt or foreign one is a CheckpointError naming it."""
    import keras

    import mtv.models.mtv_classifier  # noqa: F401  (registers the serializable classes)

    if not zipfile.is_zipfile(path):  # Keras would say "File not found" for a file that exists
        raise CheckpointError(f"'{path}' is not a valid .keras file (not a zip archive: truncated or corrupt?); "
                              "save it again with model.save(path), or download it again")
    from mtv.layers.common import skip_random_init

    try:
        with skip_random_init():  # Keras assigns every weight from the file
            return keras.saving.load_model(str(path))
    except MTVError:
        raise
    except Exception as e:  # Keras raises ValueError/KeyError/OSError/zipfile errors for a damaged archive
        raise CheckpointError(f"cannot load the .keras file '{path}' ({type(e).__name__}: {e}); is it complete and "
                              "written by mtv? Save it again with model.save(path)") from e


def load(handle: str | os.PathLike, *, config: Any = None, num_classes: int | None = None,
         sha256: str | None = None) -> Any:
    """Loads a model from a zoo name, preset dir, `.keras` file, Scenic checkpoint or http(s) URL.

    A Scenic checkpoint needs `config` (a Scenic config, or a `config.json` beside the checkpoint).
    `num_classes` different from the checkpoint's replaces the head for fine-tuning and says so.
    `sha256` is the expected hash of a URL's download or of a local file (zoo models use the registry's).
    """
    from mtv.io import registry as zoo
    from mtv.io.presets import is_preset, load_preset

    text = os.fspath(handle)
    if not text.strip():
        raise ZooError(f"mtv.load got an empty handle {text!r}: pass a zoo name (see mtv.list_models()), a preset "
                       "directory, a .keras file, a Scenic checkpoint or an http(s) URL")
    if text.startswith(("http://", "https://", "file://")):
        return _load_url(text, config, num_classes, sha256)
    path = Path(text).expanduser()
    if sha256 is not None:
        if not path.is_file():
            raise ZooError(f"sha256= checks a URL's download or a local file, and '{text}' is neither; zoo models "
                           "are checked against the sha256 in the registry")
        from mtv.io.download import fetch

        fetch(str(path), sha256=sha256)  # raises on a mismatch; the user's file is left alone
    if path.exists():
        if is_preset(path):
            return load_preset(path, num_classes=num_classes)
        if path.suffix == ".keras":
            model = _load_keras_file(path)
            if num_classes is not None and num_classes != model.spec["num_classes"]:
                from mtv.models.heads import replace_head

                model = replace_head(model, num_classes)
            return model
        from mtv.io.scenic import from_scenic

        if config is None:
            beside = (path if path.is_dir() else path.parent) / "config.json"
            if not beside.exists():
                raise ZooError(f"'{path}' looks like a Scenic checkpoint; pass config=<Scenic config, .py or "
                               ".json> (or put its config.json beside it) so the model can be built")
            config = str(beside)
        return from_scenic(config, path, num_classes=num_classes)
    if any(sep in text for sep in ("/", "\\")) or text.endswith((".keras", ".npz")):
        raise ZooError(f"'{text}' does not exist (a local path was expected)")
    name = zoo.get_entry(text)["name"]  # unknown names raise with a did-you-mean
    return load_preset(fetch_preset(name), num_classes=num_classes)
