"""`mtv.load`: one entry point for zoo names, presets, .keras files, Scenic checkpoints and URLs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from absl import logging

from mtv.errors import ZooError
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
    with file_lock(target.with_name(target.name + ".lock")):
        if is_current_preset(target) and from_file is None:  # another process converted it while we waited
            return target
        if from_file is not None:
            checkpoint = Path(from_file)
            if not checkpoint.exists():
                raise ZooError(f"--from_file '{checkpoint}' does not exist")
        else:
            checkpoint = zoo.fetch_checkpoint(entry["name"], progress=progress)
        config = load_config(entry["config"])
        model = from_scenic(config, checkpoint, num_classes=None if entry.get("class_splits") else
                            entry.get("num_classes"), class_splits=entry.get("class_splits"),
                            split_names=entry.get("split_names"))
        save_preset(model, target, metadata=_metadata_for(entry))
        logging.info("converted %s into the preset %s", entry["name"], target)
    return target


def _load_url(url: str, config, num_classes):
    from mtv.io.download import cache_dir, fetch, safe_extract_tar
    from mtv.io.presets import is_preset, load_preset

    path = fetch(url)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        dest = cache_dir() / "extracted" / path.name.split(".tar")[0].split(".tgz")[0]
        with file_lock(dest.with_name(dest.name + ".lock")):
            if not dest.exists():  # another process may have extracted it while we waited
                with atomic_dir(dest) as tmp:
                    safe_extract_tar(path, tmp)
        if is_preset(dest):
            return load_preset(dest, num_classes=num_classes)
        if (dest / "saved_model.pb").exists():
            raise ZooError(f"'{url}' is a SavedModel (serving only): load it with tensorflow_hub.load or "
                           "mtv.io.hub.load_serving, not mtv.load")
        raise ZooError(f"archive '{url}' holds neither an mtv preset nor a SavedModel")
    return load(str(path), config=config, num_classes=num_classes)


def load(handle: str | os.PathLike, *, config: Any = None, num_classes: int | None = None) -> Any:
    """Loads a model from a zoo name, preset dir, `.keras` file, Scenic checkpoint or http(s) URL.

    A Scenic checkpoint needs `config` (a Scenic config, or a `config.json` beside the checkpoint).
    `num_classes` different from the checkpoint's replaces the head for fine-tuning and says so.
    """
    from mtv.io import registry as zoo
    from mtv.io.presets import is_preset, load_preset

    text = os.fspath(handle)
    if text.startswith(("http://", "https://", "file://")):
        return _load_url(text, config, num_classes)
    path = Path(text).expanduser()
    if path.exists():
        if is_preset(path):
            return load_preset(path, num_classes=num_classes)
        if path.suffix == ".keras":
            import keras

            import mtv.models.mtv_classifier  # noqa: F401  (registers the serializable classes)

            model = keras.saving.load_model(str(path))
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
