"""build_model / from_scenic pick the MTV or M&M backbone from the config; M&M weights round-trip through Scenic
names."""

from __future__ import annotations

import numpy as np

import mtv
from mtv.models.mm_backbone import MMBackbone
from mtv.models.mtv_backbone import MTVBackbone
from mtv.models.mtv_classifier import MTVClassifier
from mtv.models.spec import is_multimodal


def test_build_model_picks_the_backbone_from_modalities(shared_dir):
    from mtv.io.configs import load_config

    cfg = load_config("epic_mm_b2_rgb_audio")
    assert cfg.model.modalities
    assert is_multimodal(cfg.to_dict())
    assert not is_multimodal(load_config("epic_mtv_b2_cva").to_dict())
    tiny = mtv.build_model(shared_dir / "fixtures" / "scenic_mtv" / "cva_2view" / "config.json")
    assert isinstance(tiny, MTVClassifier) and type(tiny.backbone) is MTVBackbone
    assert tiny.input_shapes == {"rgb": (8, 32, 32, 3)}


def test_multimodal_from_scenic_round_trip(tmp_path):
    from tests.test_multimodal import inputs_for, randomize, tiny_config  # the multimodal tests' helpers

    cfg = tiny_config(("rgb", "flow", "audio"))
    model = mtv.build_model(cfg, seed=3)
    assert type(model.backbone) is MMBackbone
    assert model.input_shapes == {"rgb": (8, 16, 16, 3), "flow": (8, 16, 16, 2), "audio": (32, 16, 1)}
    randomize(model)
    params = mtv.to_scenic(model)
    again = mtv.from_scenic(cfg, params)
    assert type(again) is type(model) and type(again.backbone) is MMBackbone
    inputs = inputs_for(model)
    a, b = model(inputs), again(inputs)
    for head in a:
        np.testing.assert_array_equal(np.asarray(a[head]), np.asarray(b[head]))
