"""Native presets: a directory holding a model's spec, weights and metadata (KerasHub-style).

Layout of a preset directory:
  config.json        {"format": "mtv-preset", "version": 1, "model": "MTV" | "MultimodalMTV", "spec": {...}}
  model.weights.h5   Keras weights (`model.save_weights`)
  metadata.json      name, class_names (list, or dict per head), preprocessing, source, accuracy, ...
Presets are written to a temporary sibling directory and renamed into place, so a reader never
sees half a preset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mtv.errors import ZooError

FORMAT = "mtv-preset"
CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE = "config.json", "model.weights.h5", "metadata.json"

DEFAULT_PREPROCESSING = {"min_resize": 256, "crop_size": 224, "zero_centering": True,
                         "value_range": [-1.0, 1.0], "stride": 2, "num_test_clips": 4,
                         "three_crops": True}


def _model_classes() -> dict:
    from mtv.models.mtv import MTV

    classes = {"MTV": MTV}
    try:
        from mtv.models.multimodal import MultimodalMTV

        classes["MultimodalMTV"] = MultimodalMTV
    except ImportError:
        pass
    return classes


def is_preset(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a preset's config.json."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def save_preset(model, directory: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Writes `model` as a preset directory atomically (temp dir + rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = {"format": FORMAT, "version": 1, "model": type(model).__name__, "spec": model.spec}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        model.save_weights(str(tmp / WEIGHTS_FILE))
        (tmp / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=1, default=str))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_preset_config(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(config, metadata) of a preset directory, validated."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        meta_path = directory / METADATA_FILE
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"'{directory}' is not a readable mtv preset: {e}") from e
    if config.get("format") != FORMAT or "spec" not in config:
        raise ZooError(f"'{directory / CONFIG_FILE}' is not an mtv preset config (expected format '{FORMAT}')")
    return config, metadata


def load_preset(directory: str | os.PathLike, *, num_classes: int | None = None) -> Any:
    """Builds the model of a preset and loads its weights; `metadata` is attached as `model.metadata`."""
    config, metadata = read_preset_config(directory)
    classes = _model_classes()
    if config.get("model", "MTV") not in classes:
        raise ZooError(f"preset '{directory}' holds an unknown model type {config.get('model')!r}")
    cls = classes[config.get("model", "MTV")]
    model = cls(config["spec"])
    try:
        model.load_weights(str(Path(directory) / WEIGHTS_FILE))
    except Exception as e:  # h5py/keras raise many types for a damaged file
        raise ZooError(f"cannot load weights of preset '{directory}': {e}") from e
    model.metadata = metadata
    if num_classes is not None and num_classes != model.spec["num_classes"]:
        from mtv.models.heads import replace_head

        model = replace_head(model, num_classes)
        model.metadata = {**metadata, "class_names": None}
    return model
