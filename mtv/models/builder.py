"""`build_model`: a randomly initialised MTV or M&M classifier from a Scenic experiment config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from mtv.models.spec import spec_from_config


def build_model(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                input_shape=None, input_shapes: Mapping | None = None, seed: int | None = None) -> keras.Model:
    """An `MTVClassifier` (random init) from a Scenic config (ConfigDict, dict, .json, .py path or name).

    A config with a `model.modalities` section other than RGB alone gets the M&M backbone.
    `input_shape` overrides the RGB input (T, H, W[, C]); `input_shapes` any stream's.
    """
    from mtv.models.mtv_classifier import MTVClassifier

    spec = spec_from_config(config, num_classes=num_classes, class_splits=class_splits, split_names=split_names,
                            input_shape=input_shape, input_shapes=input_shapes)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return MTVClassifier.from_spec(spec)
