"""SavedModel export with named signatures, TF-Hub tarballs, and loading them back for serving."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import keras
import tensorflow as tf

from mtv.data.preprocessor import VideoPreprocessor, video_input_shape
from mtv.errors import ExportError
from mtv.utils.fileio import atomic_dir, atomic_path, writing

FLOAT_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"


def _heads(model, logits) -> dict:
    """Flat output dict: logits and probabilities, per head for a multi-head model."""
    if isinstance(logits, dict):
        out = {}
        for name, value in logits.items():
            value = tf.cast(value, tf.float32)
            out[f"{name}_logits"] = value
            out[f"{name}_probabilities"] = tf.nn.softmax(value, axis=-1)
        return out
    logits = tf.cast(logits, tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def _with_policy(model, dtype: str | None):
    """The same model computing in `dtype` ('bfloat16' -> mixed_bfloat16), weights copied."""
    if dtype in (None, "float32"):
        return model
    if dtype != "bfloat16":
        raise ExportError(f"export dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        clone = type(model).from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def export(model, path: str | os.PathLike, *, xla: bool = False, dtype: str | None = None,
           uint8_signature: bool = True, min_resize: int | None = None,
           hub_tarball: str | os.PathLike | None = None) -> Path:
    """Writes a TF SavedModel with `serving_default` (float frames in [-1, 1]) and `serving_uint8`.

    `serving_uint8` takes uint8 frames of any size and applies the evaluation preprocessing
    (`mtv.data.preprocessor`): the smaller side resized to `min_resize` (default: the preset metadata's, else
    the crop size), the central crop, scaling. Both signatures take a dynamic batch and return a dict of
    `logits` and `probabilities` (per head for a multi-head model, e.g. `verb_logits`). `xla` compiles the
    serving functions; `dtype='bfloat16'` computes in mixed bfloat16. The directory is written atomically;
    `hub_tarball` also writes a TF-Hub compressed tarball of it.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise ExportError(f"export path '{path}' exists and is not empty; choose a new directory")
    serving = _with_policy(model, dtype)
    frames, height, width, channels = video_input_shape(serving)
    # The metadata lives on the original model; the bfloat16 clone is rebuilt from its config only.
    preprocessor = VideoPreprocessor.from_model(model, min_resize=min_resize) if uint8_signature else None

    archive = keras.export.ExportArchive()
    archive.track(serving)

    def float_fn(x):
        return _heads(serving, serving(x, training=False))

    archive.add_endpoint(
        name=FLOAT_SIGNATURE, fn=float_fn, jit_compile=xla,
        input_signature=[tf.TensorSpec([None, frames, height, width, channels], tf.float32, name="frames")])
    if uint8_signature:
        def uint8_fn(x):
            return _heads(serving, serving(preprocessor(x), training=False))

        archive.add_endpoint(
            name=UINT8_SIGNATURE, fn=uint8_fn, jit_compile=xla,
            input_signature=[tf.TensorSpec([None, frames, None, None, channels], tf.uint8, name="frames")])
    with writing(path), atomic_dir(path) as tmp:
        archive.write_out(str(tmp), verbose=False)
    if hub_tarball is not None:
        make_hub_tarball(path, hub_tarball)
    return path


def make_hub_tarball(saved_model_dir: str | os.PathLike, tarball: str | os.PathLike) -> Path:
    """A TF-Hub compressed module: a .tar.gz with saved_model.pb at its root, written atomically."""
    src, tarball = Path(saved_model_dir), Path(tarball)
    if not (src / "saved_model.pb").exists():
        raise ExportError(f"'{src}' is not a SavedModel directory (no saved_model.pb)")
    with writing(tarball), atomic_path(tarball) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for item in sorted(src.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(src)), recursive=False)
    return tarball


def load_serving(handle: str | os.PathLike):
    """Loads an exported SavedModel (local dir, hub tarball URL or hub handle) with tensorflow_hub."""
    import tensorflow_hub as hub

    return hub.load(os.fspath(handle))
