"""Presets (format 2): `mtv.save_preset` is public, weights are stored under their Flax names (a Scenic
checkpoint), and a version-1 preset is refused with a message that says how to regenerate it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mtv
from mtv.errors import ZooError
from mtv.io import presets
from mtv.io.scenic import load_flat_params
from tests.test_loading import fake_zoo  # noqa: F401  (a registry with one tiny Scenic checkpoint)
from tests.test_multimodal import inputs_for, logits_of, randomize, tiny_config


@pytest.fixture(scope="module")
def rgb_model():
    model = mtv.build_model(tiny_config(("rgb",)), seed=0)
    randomize(model, seed=1)
    return model


def test_save_preset_is_public_and_mtv_load_gives_the_same_logits(rgb_model, tmp_path):
    assert "save_preset" in mtv.__all__
    directory = mtv.save_preset(rgb_model, tmp_path / "preset", {"name": "tiny"})
    loaded = mtv.load(directory)
    x = inputs_for(rgb_model, seed=2)
    np.testing.assert_array_equal(logits_of(loaded(x)), logits_of(rgb_model(x)))
    assert loaded.metadata == {"name": "tiny"} and loaded.spec == rgb_model.spec


def test_multimodal_preset_round_trips_through_mtv_load(tmp_path):
    model = mtv.build_model(tiny_config(("rgb", "flow", "audio")), seed=0)
    randomize(model, seed=3)
    loaded = mtv.load(mtv.save_preset(model, tmp_path / "mm", metadata=None))
    assert type(loaded.backbone) is type(model.backbone)
    x = inputs_for(model, seed=4)
    np.testing.assert_array_equal(logits_of(loaded(x)), logits_of(model(x)))


def test_preset_weights_are_a_scenic_checkpoint_under_flax_names(rgb_model, tmp_path):
    directory = mtv.save_preset(rgb_model, tmp_path / "preset")
    config = json.loads((directory / presets.CONFIG_FILE).read_text())
    assert config["version"] == 2 and config["backbone"] == "MTVBackbone"
    assert not (directory / presets.V1_WEIGHTS_FILE).exists()
    flat = load_flat_params(directory / presets.WEIGHTS_FILE)  # Scenic's train-state layout, read without Keras
    expected = rgb_model.flax_params()
    assert set(flat) == set(expected)
    for key, var in expected.items():
        np.testing.assert_array_equal(flat[key], var.numpy())
    # ... so from_scenic takes the preset's weights file like any Scenic checkpoint.
    again = mtv.from_scenic(tiny_config(("rgb",)), directory / presets.WEIGHTS_FILE)
    x = inputs_for(rgb_model, seed=5)
    np.testing.assert_array_equal(logits_of(again(x)), logits_of(rgb_model(x)))


def _version_1_preset(directory, spec):
    directory.mkdir()
    (directory / presets.CONFIG_FILE).write_text(json.dumps({"format": "mtv-preset", "version": 1, "model": "MTV",
                                                             "spec": spec}))
    (directory / presets.V1_WEIGHTS_FILE).write_bytes(b"\x89HDF\r\n\x1a\n")
    (directory / presets.METADATA_FILE).write_text("{}")
    return directory


def test_version_1_preset_is_refused_with_how_to_regenerate(rgb_model, tmp_path):
    old = _version_1_preset(tmp_path / "old", rgb_model.spec)
    assert presets.is_preset(old) and not presets.is_current_preset(old)
    with pytest.raises(ZooError) as err:
        mtv.load(old)
    message = str(err.value)
    assert "mtv 0.1" in message and str(old) in message
    assert "--to_scenic" in message and "mtv convert" in message


def test_preset_of_an_unknown_version_is_refused(rgb_model, tmp_path):
    directory = mtv.save_preset(rgb_model, tmp_path / "preset")
    config = json.loads((directory / presets.CONFIG_FILE).read_text())
    (directory / presets.CONFIG_FILE).write_text(json.dumps({**config, "version": 3}))
    with pytest.raises(ZooError, match="format version 3"):
        mtv.load(directory)


def test_save_preset_refuses_a_foreign_model(tmp_path):
    import keras

    with pytest.raises(ZooError, match="Sequential"):
        mtv.save_preset(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "preset")
    assert not (tmp_path / "preset").exists()


def test_a_cached_version_1_zoo_preset_is_converted_again(fake_zoo):  # noqa: F811 (the imported fixture)
    from mtv.io import loading
    from tests.helpers import fixture_input, fixture_logits

    mtv.load("tiny-test")
    cache = loading.preset_cache_dir("tiny-test")
    spec = json.loads((cache / presets.CONFIG_FILE).read_text())["spec"]
    for item in cache.iterdir():
        item.unlink()
    cache.rmdir()
    _version_1_preset(cache, spec)  # what mtv 0.1 left in the cache
    model = mtv.load("tiny-test")  # from the cached download, no error
    assert presets.is_current_preset(cache)
    np.testing.assert_allclose(np.asarray(model(fixture_input())), fixture_logits(), atol=1e-5)


def test_classifier_from_preset_takes_the_zoo_names_kerashub_style():
    from mtv.models import mtv_presets
    from mtv.models.mtv_classifier import MTVClassifier

    names = mtv_presets.preset_names()
    assert "camera-motion" in names and "mtv-b-k400" in names
    assert mtv_presets.preset_info("camera-motion")["dataset"] == "camera_motion"
    model = MTVClassifier.from_preset("camera-motion")
    assert isinstance(model, MTVClassifier) and model.spec["num_classes"] == 13
    with pytest.raises(ZooError, match="camera-motion"):
        MTVClassifier.from_preset("camera-motoin")
