"""`build_model`: a randomly initialised MTV from a Scenic experiment config."""

from __future__ import annotations

from typing import Any

import keras

from mtv.models.spec import spec_from_config


def build_model(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                input_shape=None, seed: int | None = None) -> keras.Model:
    """Builds an MTV (random init) from a Scenic config (ConfigDict, dict, .json, .py path or name)."""
    from mtv.models.mtv import MTV

    spec = spec_from_config(config, num_classes=num_classes, class_splits=class_splits,
                            split_names=split_names, input_shape=input_shape)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return MTV(spec)
