"""SavedModel export with named signatures, TF-Hub tarballs, and loading them back for serving."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from mtv.errors import ExportError

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


def preprocess_uint8(frames: tf.Tensor, *, crop_size: tuple[int, int], min_resize: int) -> tf.Tensor:
    """uint8 frames [B, T, h, w, 3] of any size -> float32 [B, T, crop, crop, 3] in [-1, 1].

    Resizes the shorter side to `min_resize` (bilinear), takes the central crop, and scales
    [0, 255] -> [0, 1] -> [-1, 1], as the evaluation pipeline does.
    """
    shape = tf.shape(frames)
    b, t, h, w = shape[0], shape[1], shape[2], shape[3]
    x = tf.reshape(frames, tf.stack([b * t, h, w, shape[4]]))
    x = tf.image.convert_image_dtype(x, tf.float32)
    scale = tf.cast(min_resize, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.cast(tf.math.round(tf.cast(h, tf.float32) * scale), tf.int32)
    new_w = tf.cast(tf.math.round(tf.cast(w, tf.float32) * scale), tf.int32)
    x = tf.image.resize(x, tf.stack([tf.maximum(new_h, crop_size[0]), tf.maximum(new_w, crop_size[1])]))
    x = tf.image.resize_with_crop_or_pad(x, crop_size[0], crop_size[1])
    x = x * 2.0 - 1.0
    return tf.reshape(x, tf.stack([b, t, crop_size[0], crop_size[1], shape[4]]))


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

    Both take a dynamic batch and return a dict of `logits` and `probabilities` (per head for a
    multi-head model, e.g. `verb_logits`). `xla` compiles the serving functions; `dtype='bfloat16'`
    computes in mixed bfloat16. The directory is written atomically; `hub_tarball` also writes a
    TF-Hub compressed tarball of it.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise ExportError(f"export path '{path}' exists and is not empty; choose a new directory")
    serving = _with_policy(model, dtype)
    frames, height, width, channels = serving.input_frames_shape
    meta = getattr(model, "metadata", None) or {}
    pre = meta.get("preprocessing") or {}
    min_resize = int(min_resize or pre.get("min_resize") or round(max(height, width) * 256 / 224))

    archive = keras.export.ExportArchive()
    archive.track(serving)

    def float_fn(x):
        return _heads(serving, serving(x, training=False))

    archive.add_endpoint(
        name=FLOAT_SIGNATURE, fn=float_fn, jit_compile=xla,
        input_signature=[tf.TensorSpec([None, frames, height, width, channels], tf.float32, name="frames")])
    if uint8_signature:
        def uint8_fn(x):
            x = preprocess_uint8(x, crop_size=(height, width), min_resize=min_resize)
            return _heads(serving, serving(x, training=False))

        archive.add_endpoint(
            name=UINT8_SIGNATURE, fn=uint8_fn, jit_compile=xla,
            input_signature=[tf.TensorSpec([None, frames, None, None, channels], tf.uint8, name="frames")])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive.write_out(str(tmp), verbose=False)
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if hub_tarball is not None:
        make_hub_tarball(path, hub_tarball)
    return path


def make_hub_tarball(saved_model_dir: str | os.PathLike, tarball: str | os.PathLike) -> Path:
    """A TF-Hub compressed module: a .tar.gz with saved_model.pb at its root, written atomically."""
    src, tarball = Path(saved_model_dir), Path(tarball)
    if not (src / "saved_model.pb").exists():
        raise ExportError(f"'{src}' is not a SavedModel directory (no saved_model.pb)")
    tmp = tarball.with_name(f".{tarball.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for item in sorted(src.rglob("*")):
                tar.add(item, arcname=str(item.relative_to(src)), recursive=False)
        os.replace(tmp, tarball)
    finally:
        tmp.unlink(missing_ok=True)
    return tarball


def load_serving(handle: str | os.PathLike):
    """Loads an exported SavedModel (local dir, hub tarball URL or hub handle) with tensorflow_hub."""
    import tensorflow_hub as hub

    return hub.load(os.fspath(handle))
