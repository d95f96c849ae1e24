"""mtv: Multiview Transformers for Video Recognition (and M&M) in Keras 3.

Public API: build_model, from_scenic, to_scenic, load, save_preset, list_models, export, predict.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'mtv' has no attribute '{name}'")


__all__ = sorted(_LAZY)
