"""Parity of the Keras MTV with Scenic: the recorded Scenic fixture, then a matrix of tiny configs
covering every option, each checked against the independent float64 reference in reference_mtv.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mtv
from tests import reference_mtv as ref

FIXTURE = "fixtures/scenic_mtv/cva_2view"
TOL = 1e-5  # max abs difference, relative to the output scale (max(1, max |reference|))


def _max_diff(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def _assert_close(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))))
    diff = _max_diff(got, want)
    assert diff <= TOL * scale, f"{what}: max abs diff {diff:.3g} (output scale {scale:.3g})"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def fixture(shared_dir: Path) -> dict:
    d = shared_dir / FIXTURE
    record = json.loads((d / "config.json").read_text())
    with np.load(d / "params.npz") as npz:
        params = {k: npz[k] for k in npz.files}
    with np.load(d / "intermediates.npz") as npz:
        inter = {k: npz[k] for k in npz.files}
    return {"record": record, "config": record["config"], "params": params, "x": np.load(d / "input.npy"),
            "logits": np.load(d / "logits.npy"), "logits_f64": np.load(d / "logits_f64.npy"),
            "pre_logits": np.load(d / "pre_logits.npy"), "intermediates": inter,
            "num_classes": record["dataset_meta_data"]["num_classes"]}


@pytest.fixture(scope="module")
def fixture_model(fixture):
    return mtv.from_scenic(fixture["config"], fixture["params"], num_classes=fixture["num_classes"],
                           input_shape=fixture["record"]["input_shape"][1:])


def test_reference_reproduces_scenic_fixture(fixture):
    """The oracle itself: float64 logits to ~1e-12 of Scenic's float64 run, every stage to float32 noise."""
    stages = ref.intermediates(fixture["params"], fixture["config"], fixture["x"])
    assert _max_diff(stages["logits"], fixture["logits_f64"]) < 1e-12
    assert _max_diff(stages["logits"], fixture["logits"]) < 2e-6
    assert _max_diff(stages["pre_logits"], fixture["pre_logits"]) < 1e-5
    for name, want in fixture["intermediates"].items():
        assert stages[name].shape == want.shape, name
        assert _max_diff(stages[name], want) < 1e-5, name


def test_reference_param_tree_matches_fixture(fixture):
    shapes = ref.param_shapes(fixture["config"], fixture["x"].shape, fixture["num_classes"])
    assert shapes == {k: v.shape for k, v in fixture["params"].items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == fixture["record"]["num_params"]


def test_fixture_logits(fixture, fixture_model):
    got = np.asarray(fixture_model(fixture["x"]))
    assert got.dtype == np.float32
    assert _max_diff(got, fixture["logits"]) <= TOL
    assert _max_diff(got, fixture["logits_f64"]) <= TOL


def test_fixture_pre_logits(fixture, fixture_model):
    got = np.asarray(fixture_model.pre_logits(fixture["x"]))
    assert got.shape == fixture["pre_logits"].shape
    assert _max_diff(got, fixture["pre_logits"]) <= TOL


def test_fixture_round_trip(fixture, fixture_model):
    flat = _flatten(mtv.to_scenic(fixture_model))
    assert sorted(flat) == sorted(fixture["params"])
    for key, value in fixture["params"].items():
        assert flat[key].dtype == value.dtype and np.array_equal(flat[key], value), key


def test_fixture_from_npz_path(fixture, shared_dir):
    model = mtv.from_scenic(fixture["config"], shared_dir / FIXTURE / "params.npz",
                            num_classes=fixture["num_classes"], input_shape=(8, 32, 32, 3))
    assert _max_diff(model(fixture["x"]), fixture["logits"]) <= TOL


# ------------------------------------------------------------------------------------- config matrix

CVA = "cross_view_attention"


def _cva(layers, descending=True, use_query_config=True) -> dict:
    return {"type": CVA, "fusion_layers": list(layers), "fuse_in_descending_order": descending,
            "use_query_config": use_query_config}


def _bottleneck(layers, tokens=3, descending=True) -> dict:
    return {"type": "bottleneck", "fusion_layers": list(layers), "fuse_in_descending_order": descending,
            "bottleneck_tokens": tokens}


def _global(merge="channel", hidden=20, heads=2, layers=1) -> dict:
    return {"num_heads": heads, "mlp_dim": 24, "num_layers": layers, "hidden_size": hidden, "merge_axis": merge}


# (hidden, heads, mlp, layers, (ph, pw, pt)); 32x32 inputs with 8x8 patches, 16x16 with 4x4.
A32 = [(16, 2, 32, 2, (8, 8, 4)), (24, 3, 48, 2, (8, 8, 2))]
A16 = [(8, 2, 16, 2, (4, 4, 4)), (12, 3, 24, 2, (4, 4, 2))]
THREE = [(8, 2, 16, 2, (4, 4, 4)), (12, 2, 24, 3, (4, 4, 2)), (16, 4, 32, 4, (4, 4, 1))]
THREE_WIDE = [(8, 2, 16, 2, (4, 4, 4)), (12, 3, 24, 3, (4, 4, 2)), (16, 2, 32, 3, (4, 4, 1))]

# id -> (config, (frames, height, width), extra kwargs for from_scenic)
CASES = {
    "cva_desc": (ref.scenic_config(A32, fusion=_cva([1])), (8, 32, 32), {}),
    "cva_asc": (ref.scenic_config(A32, fusion=_cva([1], descending=False)), (8, 32, 32), {}),
    # use_query_config=False takes heads and qkv width from the key/value view (4 heads of 6 here)
    "cva_kv_config_desc": (ref.scenic_config([(16, 2, 32, 2, (4, 4, 4)), (24, 4, 48, 2, (4, 4, 2))],
                                             fusion=_cva([0], use_query_config=False)), (8, 16, 16), {}),
    "cva_kv_config_asc": (ref.scenic_config([(16, 2, 32, 2, (4, 4, 4)), (24, 4, 48, 2, (4, 4, 2))],
                                            fusion=_cva([1], descending=False, use_query_config=False)),
                          (8, 16, 16), {}),
    # 3 views, depths 2/3/4, fused at 0, 2, 3: view0 is exhausted at 2 and 3, view1 at 3
    "cva_3view_unequal_depths": (ref.scenic_config(THREE, fusion=_cva([0, 2, 3])), (8, 16, 16), {}),
    "cva_3view_asc_kv_config": (ref.scenic_config(THREE, fusion=_cva([1, 3], False, False)), (8, 16, 16), {}),
    # every layer fused; views with different spatial patches; 8 frames per aligned step in view1
    "cva_every_layer_mixed_patches": (ref.scenic_config([(8, 2, 16, 2, (8, 8, 8)), (12, 2, 24, 2, (4, 4, 1))],
                                                        fusion=_cva([0, 1])), (8, 16, 16), {}),
    "cva_non_square": (ref.scenic_config(A16, fusion=_cva([1])), (8, 16, 32), {}),
    "bottleneck_desc_projections": (ref.scenic_config(THREE_WIDE, fusion=_bottleneck([0, 2])), (8, 16, 16), {}),
    "bottleneck_asc_projections": (ref.scenic_config(THREE_WIDE, fusion=_bottleneck([0, 2], descending=False)),
                                   (8, 16, 16), {}),
    "bottleneck_equal_widths": (ref.scenic_config([(12, 2, 24, 2, (4, 4, 4)), (12, 3, 24, 2, (4, 4, 2))],
                                                  fusion=_bottleneck([0, 1], tokens=2)), (8, 16, 16), {}),
    # view0 has 1 layer: at layer 2 only view1 is visited and the bottleneck comes back from view0's width
    "bottleneck_exhausted_view": (ref.scenic_config([(8, 2, 16, 1, (4, 4, 4)), (12, 3, 24, 3, (4, 4, 2))],
                                                    fusion=_bottleneck([0, 2])), (8, 16, 16), {}),
    "no_fusion_merge_time": (ref.scenic_config(A16, fusion=None, global_encoder=_global("time")), (8, 16, 16), {}),
    "cva_merge_time": (ref.scenic_config(THREE, fusion=_cva([1]), global_encoder=_global("time", heads=4)),
                       (8, 16, 16), {}),
    "bottleneck_merge_time": (ref.scenic_config(A16, fusion=_bottleneck([1]), global_encoder=_global("time")),
                              (8, 16, 16), {}),
    "gap": (ref.scenic_config(A16, fusion=_cva([1]), classifier="gap"), (8, 16, 16), {}),
    "gmp": (ref.scenic_config(A16, fusion=_cva([0]), classifier="gmp"), (8, 16, 16), {}),
    "gsp": (ref.scenic_config(A16, fusion=_bottleneck([1]), classifier="gsp"), (8, 16, 16), {}),
    "gap_merge_time": (ref.scenic_config(A16, fusion=_cva([1]), classifier="gap",
                                         global_encoder=_global("time")), (8, 16, 16), {}),
    "classifier_0": (ref.scenic_config(A16, fusion=_cva([1]), classifier="0"), (8, 16, 16), {}),
    "keep_st_gap": (ref.scenic_config(A16, fusion=_cva([1]), classifier="gap", keep_spatiotemporal_features=True),
                    (8, 16, 32), {}),
    "keep_st_gmp_merge_time": (ref.scenic_config(A16, fusion=_cva([0]), classifier="gmp",
                                                 keep_spatiotemporal_features=True,
                                                 global_encoder=_global("time")), (8, 16, 16), {}),
    "keep_st_gsp_bottleneck": (ref.scenic_config(THREE_WIDE, fusion=_bottleneck([1]), classifier="gsp",
                                                 keep_spatiotemporal_features=True), (8, 16, 16), {}),
    "single_view": (ref.scenic_config([(12, 3, 24, 2, (4, 4, 2))]), (8, 16, 16), {}),
    "single_view_cva": (ref.scenic_config([(12, 3, 24, 2, (4, 4, 2))], fusion=_cva([1])), (8, 16, 16), {}),
    "epic_multihead": (ref.scenic_config(THREE, fusion=_cva([1, 2])), (8, 16, 16),
                       {"class_splits": [3, 2], "split_names": ["noun", "verb"]}),
    "final_endpoint_pre_logits": (ref.scenic_config(A16, fusion=_cva([1]), final_endpoint="pre_logits"),
                                  (8, 16, 16), {}),
}
NUM_CLASSES = 5
BATCH = 2


def _case_seed(name: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(name))


_BUILT: dict = {}


def _built(name: str):
    """(config, params, model, input) for a case, built once per test session."""
    if name not in _BUILT:
        config, (frames, height, width), kwargs = CASES[name]
        rng = np.random.default_rng(_case_seed(name))
        classes = sum(kwargs.get("class_splits", [])) or NUM_CLASSES
        params = ref.init_params(config, (frames, height, width, 3), classes, rng)
        model = mtv.from_scenic(config, dict(params), num_classes=None if "class_splits" in kwargs else classes,
                                input_shape=(frames, height, width, 3), **kwargs)
        x = rng.uniform(-1.0, 1.0, (BATCH, frames, height, width, 3)).astype(np.float32)
        _BUILT[name] = (config, params, model, x)
    return _BUILT[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name):
    config, params, model, x = _built(name)
    _, _, kwargs = CASES[name]
    want_pre = ref.forward(params, config, x, endpoint="pre_logits")
    _assert_close(model.pre_logits(x), want_pre, f"{name} pre_logits")
    if config["model"].get("final_endpoint") == "pre_logits":
        _assert_close(model(x), want_pre, f"{name} output")
        return
    want = ref.forward(params, config, x)
    got = model(x)
    if "class_splits" in kwargs:
        assert isinstance(got, dict) and list(got) == kwargs["split_names"]
        start = 0
        for head, size in zip(kwargs["split_names"], kwargs["class_splits"], strict=True):
            _assert_close(got[head], want[:, start:start + size], f"{name} head {head}")
            start += size
    else:
        _assert_close(got, want, f"{name} logits")


@pytest.mark.parametrize("name", sorted(CASES))
def test_to_scenic_round_trip_is_exact(name):
    _, params, model, _ = _built(name)
    flat = _flatten(mtv.to_scenic(model))
    assert sorted(flat) == sorted(params)
    for key, value in params.items():
        assert flat[key].shape == value.shape and flat[key].dtype == value.dtype, key
        assert np.array_equal(flat[key], value), key


def test_reference_has_no_head_for_pre_logits_endpoint():
    config = CASES["final_endpoint_pre_logits"][0]
    assert not any(k.startswith("output_projection") for k in ref.param_shapes(config, (8, 16, 16, 3), 5))


def test_reference_param_count_mtv_b_k400():
    """Section (a.2): the real MTV-B K400 tree from the reference's own shape table."""
    views = [(192, 3, 768, 12, (16, 16, 8)), (384, 6, 1536, 12, (16, 16, 4)), (768, 12, 3072, 12, (16, 16, 2))]
    config = ref.scenic_config(views, fusion=_cva([5, 11]), num_frames=32,
                               global_encoder={"num_heads": 8, "mlp_dim": 3072, "num_layers": 12,
                                               "hidden_size": 768, "merge_axis": "channel"})
    shapes = ref.param_shapes(config, (32, 224, 224, 3), 400)
    assert ref.num_params(config, (32, 224, 224, 3), 400) == 304_270_864
    assert shapes["global_encoder/posembed_input/pos_embedding"] == (1, 17, 1344)
    assert shapes["MultiviewEncoder/cross_view_encoderblock_5/cross_attention_view1_2/key/kernel"] == (768, 6, 64)
    assert "MultiviewEncoder/encoderblock_5_view0/LayerNorm_0/scale" not in shapes
