"""Native presets: a directory holding a model's spec, weights and metadata (KerasHub-style).

Layout of a preset directory (format version 2):
  config.json       {"format": "mtv-preset", "version": 2, "model": "MTVClassifier", "backbone": "MTVBackbone",
                     "spec": {...}}  (the spec of `mtv.models.spec`)
  weights.msgpack   the weights under their Scenic/Flax names: a Flax msgpack train-state checkpoint
                    (optax layout, as `mtv.to_scenic` writes), so it never depends on Keras' object
                    layout and Scenic's `checkpoints.restore_checkpoint` reads it too
  metadata.json     name, class_names (list, or dict per head), preprocessing, source, accuracy, ...
Version 1 (mtv 0.1) stored Keras' `model.weights.h5`; reading one is a ZooError that says how to
regenerate it. Presets are written to a temporary sibling directory and renamed into place, so a
reader never sees half a preset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtv.errors import CheckpointError, MTVError, ZooError
from mtv.utils.fileio import atomic_dir

FORMAT = "mtv-preset"
VERSION = 2
CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE = "config.json", "weights.msgpack", "metadata.json"
V1_WEIGHTS_FILE = "model.weights.h5"

DEFAULT_PREPROCESSING = {"min_resize": 256, "crop_size": 224, "zero_centering": True,
                         "value_range": [-1.0, 1.0], "stride": 2, "num_test_clips": 4,
                         "three_crops": True}


def is_preset(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a preset's config.json and weights (any format version)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and any(
        (p / name).is_file() for name in (WEIGHTS_FILE, V1_WEIGHTS_FILE))


def is_current_preset(path: str | os.PathLike) -> bool:
    """True when `path` is a preset this version of mtv reads (format version 2)."""
    if not is_preset(path):
        return False
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text()).get("version") == VERSION
    except (OSError, json.JSONDecodeError):
        return False


def save_preset(model, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Writes `model` (an MTVClassifier) as a preset directory, atomically (temp dir + rename); returns it."""
    from mtv.io.scenic import to_scenic

    if not (hasattr(model, "flax_params") and hasattr(model, "spec")):
        raise ZooError(f"save_preset takes an mtv model (from mtv.build_model, mtv.load, ...), got "
                       f"{type(model).__name__}")
    directory = Path(directory)
    with atomic_dir(directory, replace=True) as tmp:
        backbone = getattr(model, "backbone", None)
        config = {"format": FORMAT, "version": VERSION, "model": type(model).__name__,
                  "backbone": type(backbone).__name__ if backbone is not None else None, "spec": model.spec}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        to_scenic(model, tmp / WEIGHTS_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=1, default=str))
    return directory


def read_preset_config(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(config, metadata) of a preset directory, validated; a version-1 preset is a ZooError."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        meta_path = directory / METADATA_FILE
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"'{directory}' is not a readable mtv preset: {e}; save the preset again, or fetch it "
                       "again (mtv cache clear NAME for a zoo model)") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT or "spec" not in config:
        raise ZooError(f"'{directory / CONFIG_FILE}' is not an mtv preset config (expected format '{FORMAT}')")
    version = config.get("version")
    if version == 1:
        raise ZooError(
            f"preset '{directory}' was written by mtv 0.1 (format version 1: Keras weights in {V1_WEIGHTS_FILE}); "
            f"this mtv reads version {VERSION} (weights under their Scenic/Flax names). Regenerate it: with mtv "
            f"0.1 run `mtv convert {directory} --to_scenic --out ckpt.msgpack`, then with this mtv "
            "`mtv convert ckpt.msgpack --config CONFIG --out NEW_DIR` (or `mtv.save_preset(mtv.from_scenic("
            "config, 'ckpt.msgpack'), NEW_DIR)`); a zoo model is simply fetched and converted again")
    if version != VERSION:
        raise ZooError(f"preset '{directory}' has format version {version!r}; this mtv reads version {VERSION} "
                       "(was it written by a newer mtv?)")
    return config, metadata


def load_preset(directory: str | os.PathLike, *, num_classes: int | None = None) -> Any:
    """Builds the model of a preset and loads its weights; `metadata` is attached as `model.metadata`."""
    from mtv.io.scenic import assign_flax_params, load_flat_params
    from mtv.layers.common import skip_random_init
    from mtv.models.mtv_classifier import MTVClassifier

    directory = Path(directory)
    config, metadata = read_preset_config(directory)
    try:
        with skip_random_init():  # every weight is assigned below (strictly)
            model = MTVClassifier.from_spec(config["spec"])
    except KeyError as e:
        raise ZooError(f"preset '{directory / CONFIG_FILE}' holds an invalid model spec: the field {e.args[0]!r} is "
                       "missing (a damaged or hand-edited config.json?); save the preset again, or fetch it "
                       "again (mtv cache clear NAME for a zoo model)") from e
    except (MTVError, TypeError, ValueError, AttributeError) as e:
        raise ZooError(f"preset '{directory / CONFIG_FILE}' holds an invalid model spec ({e}); save the preset "
                       "again, or fetch it again (mtv cache clear NAME for a zoo model)") from e
    try:
        assign_flax_params(model, load_flat_params(directory / WEIGHTS_FILE))
    except CheckpointError as e:
        raise ZooError(f"cannot load the weights of preset '{directory}' ({WEIGHTS_FILE}): {e}") from e
    model.metadata = metadata
    if num_classes is not None and num_classes != model.spec["num_classes"]:
        from mtv.models.heads import replace_head

        model = replace_head(model, num_classes)
        model.metadata = {**metadata, "class_names": None}
    return model
