"""`build_model`: a randomly initialised MTV from a Scenic experiment config."""

from __future__ import annotations

from typing import Any

import keras

from mtv.models.spec import spec_from_config


def is_multimodal(config: dict) -> bool:
    """True when a (plain-dict) config describes an M&M model (it has `model.modalities`)."""
    cfg = config.get("config", config) if "model" not in config else config
    return bool((cfg.get("model") or {}).get("modalities"))


def build_model(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                input_shape=None, seed: int | None = None) -> keras.Model:
    """Builds an MTV (random init) from a Scenic config (ConfigDict, dict, .json, .py path or name).

    A config with a `model.modalities` section builds the multimodal M&M model instead.
    """
    from mtv.models.mtv import MTV
    from mtv.models.spec import read_config

    if is_multimodal(read_config(config)):
        from mtv.models.multimodal import build_multimodal_model

        return build_multimodal_model(config, num_classes=num_classes, class_splits=class_splits,
                                      split_names=split_names, seed=seed)

    spec = spec_from_config(config, num_classes=num_classes, class_splits=class_splits,
                            split_names=split_names, input_shape=input_shape)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return MTV(spec)
