"""build_model / from_scenic pick MTV or M&M from the config, and M&M weights round-trip through Scenic names."""

from __future__ import annotations

import numpy as np

import mtv
from mtv.models.mtv import MTV


def test_build_model_dispatches_on_modalities():
    from mtv.io.configs import load_config
    from mtv.models.multimodal import MultimodalMTV

    cfg = load_config("epic_mm_b2_rgb_audio")
    assert cfg.model.modalities
    from mtv.models.builder import is_multimodal

    assert is_multimodal(cfg.to_dict())
    assert not is_multimodal(load_config("epic_mtv_b2_cva").to_dict())
    tiny = mtv.build_model("/work/shared/fixtures/scenic_mtv/cva_2view/config.json")
    assert isinstance(tiny, MTV) and not isinstance(tiny, MultimodalMTV)


def test_multimodal_from_scenic_round_trip(tmp_path):
    from tests.test_multimodal import inputs_for, randomize, tiny_config  # the multimodal tests' helpers

    cfg = tiny_config(("rgb", "flow", "audio"))
    model = mtv.build_model(cfg, seed=3)
    randomize(model)
    params = mtv.to_scenic(model)
    again = mtv.from_scenic(cfg, params)
    assert type(again) is type(model)
    inputs = inputs_for(model)
    a, b = model(inputs), again(inputs)
    for head in a:
        np.testing.assert_array_equal(np.asarray(a[head]), np.asarray(b[head]))
