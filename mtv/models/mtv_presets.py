"""The presets of MTV and M&M classifiers, KerasHub-style: the names `MTVClassifier.from_preset` accepts.

They are read from the one registry (`zoo/models.json`, `mtv.io.registry`), never listed twice; any
preset directory, `.keras` file or http(s) URL that `mtv.load` takes is a preset handle as well.
"""

from __future__ import annotations


def preset_names() -> list[str]:
    """Every zoo model name, in registry order."""
    from mtv.io.registry import list_models

    return list_models()


def preset_info(name: str) -> dict:
    """The registry entry of one preset (title, dataset, accuracy, config, ...); unknown names are a ZooError."""
    from mtv.io.registry import get_entry

    return get_entry(name)
