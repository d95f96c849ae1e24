"""mtv: Multiview Transformers for Video Recognition (and M&M) in Keras 3.

Public API: build_model, from_scenic, to_scenic, load, save_preset, list_models, export, predict.

The models are written in `keras.ops` and run on Keras' TensorFlow or JAX backend (`KERAS_BACKEND=jax`, with or
without TensorFlow installed). Unless KERAS_BACKEND says otherwise, mtv picks TensorFlow when it is installed,
else JAX. `export` (SavedModel / TF Hub) needs TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
import os


def _default_backend() -> str:
    """TensorFlow where it is installed (every feature works), else JAX (the model path)."""
    for backend in ("tensorflow", "jax"):
        try:
            if importlib.util.find_spec(backend) is not None:
                return backend
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            continue
    return "tensorflow"  # neither: Keras' own error will say what to install


if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = _default_backend()

__version__ = "0.2.0"

_LAZY = {
    "build_model": "mtv.models.builder",
    "from_scenic": "mtv.io.scenic",
    "to_scenic": "mtv.io.scenic",
    "load": "mtv.io.loading",
    "save_preset": "mtv.io.presets",
    "list_models": "mtv.io.registry",
    "export": "mtv.io.hub",
    "predict": "mtv.eval.prediction",
}


# What each TensorFlow-only entry point does, for the error when TensorFlow is not installed.
_NEEDS_TF = {"export": "mtv.export (SavedModel / TF Hub export)"}


def __getattr__(name: str):
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as err:
            from mtv.utils.lazy_tf import is_tensorflow_missing, missing_tensorflow

            if is_tensorflow_missing(err):
                raise missing_tensorflow(_NEEDS_TF.get(name, f"mtv.{name}")) from None
            raise
        value = getattr(module, name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'mtv' has no attribute '{name}'")


__all__ = sorted(_LAZY)
