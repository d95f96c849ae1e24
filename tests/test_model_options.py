"""Keras-side behaviour of the MTV model: every option matters, serialisation round trips, training
mode, Scenic's stochastic-depth schedule, the real MTV-B size, and clear errors on bad input."""

from __future__ import annotations

import gc
from pathlib import Path

import keras
import numpy as np
import pytest

import mtv
from mtv.errors import CheckpointError, ConfigError, MTVError, ShapeError
from mtv.io import configs as configs_io
from tests import reference_mtv as ref

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 16, 16, 3)
CLASSES = 5
A16 = [(8, 2, 16, 2, (4, 4, 4)), (12, 3, 24, 2, (4, 4, 2))]
EQUAL = [(12, 2, 24, 2, (4, 4, 4)), (12, 3, 24, 2, (4, 4, 2))]
THREE = [(8, 2, 16, 1, (4, 4, 4)), (12, 2, 24, 2, (4, 4, 2)), (16, 4, 32, 2, (4, 4, 1))]


def _cva(layers=(1,), descending=True, use_query_config=True) -> dict:
    return {"type": "cross_view_attention", "fusion_layers": list(layers),
            "fuse_in_descending_order": descending, "use_query_config": use_query_config}


def _bottleneck(layers=(1,), tokens=2, descending=True) -> dict:
    return {"type": "bottleneck", "fusion_layers": list(layers), "fuse_in_descending_order": descending,
            "bottleneck_tokens": tokens}


def _global(merge="channel") -> dict:
    return {"num_heads": 2, "mlp_dim": 24, "num_layers": 1, "hidden_size": 20, "merge_axis": merge}


def _params(config, seed=0, like: dict | None = None) -> dict:
    """Random Scenic params; entries shared with `like` (same name and shape) are copied from it."""
    params = ref.init_params(config, SHAPE, CLASSES, np.random.default_rng(seed))
    for key, value in (like or {}).items():
        if key in params and params[key].shape == value.shape:
            params[key] = value
    return params


def _model(config, params=None, **kwargs):
    params = _params(config) if params is None else params
    classes = None if "class_splits" in kwargs else CLASSES
    return mtv.from_scenic(config, dict(params), num_classes=classes, input_shape=SHAPE, **kwargs)


def _input(batch=2, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *SHAPE)).astype(np.float32)


def _as_arrays(out) -> dict:
    return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else {"": np.asarray(out)}


def _bitwise_equal(a, b) -> bool:
    a, b = _as_arrays(a), _as_arrays(b)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _max_diff(a, b) -> float:
    a, b = _as_arrays(a), _as_arrays(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.flax_params().items()}


# ------------------------------------------------------------------------------- every option matters

# (id, config a, config b, whether both have the very same param tree)
OPTION_PAIRS = [
    ("cva_fusion_order", ref.scenic_config(THREE, fusion=_cva((0, 1))),
     ref.scenic_config(THREE, fusion=_cva((0, 1), descending=False)), False),
    ("bottleneck_fusion_order", ref.scenic_config(EQUAL, fusion=_bottleneck((0, 1))),
     ref.scenic_config(EQUAL, fusion=_bottleneck((0, 1), descending=False)), True),
    ("bottleneck_fusion_layers", ref.scenic_config(EQUAL, fusion=_bottleneck((0,))),
     ref.scenic_config(EQUAL, fusion=_bottleneck((1,))), True),
    ("cva_fusion_layers", ref.scenic_config(A16, fusion=_cva((0,))), ref.scenic_config(A16, fusion=_cva((1,))),
     False),
    ("cva_vs_no_fusion", ref.scenic_config(A16, fusion=_cva((1,))), ref.scenic_config(A16, fusion=None), False),
    ("cva_vs_bottleneck", ref.scenic_config(A16, fusion=_cva((1,))),
     ref.scenic_config(A16, fusion=_bottleneck((1,))), False),
    ("bottleneck_tokens", ref.scenic_config(EQUAL, fusion=_bottleneck((1,), tokens=1)),
     ref.scenic_config(EQUAL, fusion=_bottleneck((1,), tokens=4)), False),
    ("merge_axis", ref.scenic_config(A16, fusion=_cva(), global_encoder=_global("channel")),
     ref.scenic_config(A16, fusion=_cva(), global_encoder=_global("time")), False),
    ("gap_vs_gmp", ref.scenic_config(A16, fusion=_cva(), classifier="gap"),
     ref.scenic_config(A16, fusion=_cva(), classifier="gmp"), True),
    ("gap_vs_gsp", ref.scenic_config(A16, fusion=_cva(), classifier="gap"),
     ref.scenic_config(A16, fusion=_cva(), classifier="gsp"), True),
    ("token_vs_gap", ref.scenic_config(A16, fusion=_cva(), classifier="token"),
     ref.scenic_config(A16, fusion=_cva(), classifier="gap"), False),
    ("keep_spatiotemporal_features", ref.scenic_config(A16, fusion=_cva(), classifier="gap"),
     ref.scenic_config(A16, fusion=_cva(), classifier="gap", keep_spatiotemporal_features=True), True),
]


@pytest.mark.parametrize("name,config_a,config_b,same_tree", OPTION_PAIRS, ids=[p[0] for p in OPTION_PAIRS])
def test_option_changes_output(name, config_a, config_b, same_tree):
    params_a = _params(config_a, seed=3)
    params_b = _params(config_b, seed=4, like=params_a)
    model_a, model_b = _model(config_a, params_a), _model(config_b, params_b)
    assert (_shapes(model_a) == _shapes(model_b)) == same_tree
    if same_tree:
        assert all(np.array_equal(params_a[k], params_b[k]) for k in params_a)
    x = _input()
    assert _max_diff(model_a(x), model_b(x)) > 1e-3, f"option {name} did not change the logits"


def test_fusion_order_picks_the_query_views():
    names = {d: {k.split("/")[2] for k in _shapes(_model(ref.scenic_config(THREE, fusion=_cva((1,), d))))
                 if "/cross_attention_view" in k} for d in (True, False)}
    assert names[True] == {"cross_attention_view0_1", "cross_attention_view1_2"}
    assert names[False] == {"cross_attention_view1_0", "cross_attention_view2_1"}


def test_use_query_config_changes_cross_attention_shapes():
    views = [(16, 2, 32, 2, (4, 4, 4)), (24, 4, 48, 2, (4, 4, 2))]
    key = "MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view0_1/"
    query = _shapes(_model(ref.scenic_config(views, fusion=_cva((1,), use_query_config=True))))
    kv = _shapes(_model(ref.scenic_config(views, fusion=_cva((1,), use_query_config=False))))
    # query view: 2 heads of 16/2; key/value view: 4 heads of 24/4; the output goes back to width 16
    assert query[key + "query/kernel"] == (16, 2, 8) and query[key + "key/kernel"] == (24, 2, 8)
    assert kv[key + "query/kernel"] == (16, 4, 6) and kv[key + "key/kernel"] == (24, 4, 6)
    assert query[key + "out/kernel"] == (2, 8, 16) and kv[key + "out/kernel"] == (4, 6, 16)


def test_keep_spatiotemporal_pre_logits_are_a_feature_map():
    config = ref.scenic_config(A16, fusion=_cva(), classifier="gap", keep_spatiotemporal_features=True)
    pre = np.asarray(_model(config).pre_logits(_input()))
    assert pre.shape == (2, 4, 4, 4, 20)  # (B, max temporal tokens, H/4, W/4, 8 + 12)


def test_final_endpoint_pre_logits_has_no_head():
    config = ref.scenic_config(A16, fusion=_cva(), final_endpoint="pre_logits")
    model = _model(config)
    assert not any(k.startswith("output_projection") for k in model.flax_params())
    assert np.asarray(model(_input())).shape == (2, 20)


# ------------------------------------------------------------------------------------ serialisation

SERIALISED = {
    "cva_token": (ref.scenic_config(THREE, fusion=_cva((0, 1))), {}),
    "bottleneck_time_gap": (ref.scenic_config(A16, fusion=_bottleneck((0, 1), tokens=3), classifier="gap",
                                              global_encoder=_global("time")), {}),
    "keep_st_multihead": (ref.scenic_config(A16, fusion=_cva(), classifier="gmp",
                                            keep_spatiotemporal_features=True),
                          {"class_splits": [3, 2], "split_names": ["noun", "verb"]}),
}


@pytest.fixture(scope="module", params=sorted(SERIALISED))
def serialised_case(request):
    config, kwargs = SERIALISED[request.param]
    model = _model(config, ref.init_params(config, SHAPE, sum(kwargs.get("class_splits", [CLASSES])),
                                           np.random.default_rng(7)), **kwargs)
    return model, _input(seed=8)


def test_get_config_from_config_round_trip(serialised_case):
    model, x = serialised_case
    clone = type(model).from_config(model.get_config())
    assert _shapes(clone) == _shapes(model)
    assert not _bitwise_equal(clone(x), model(x))  # fresh weights first: the copy below is what matters
    target = clone.flax_params()
    for key, var in model.flax_params().items():
        target[key].assign(var)
    assert _bitwise_equal(clone(x), model(x))


def test_keras_file_round_trip(serialised_case, tmp_path):
    model, x = serialised_case
    path = tmp_path / "mtv.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert _bitwise_equal(loaded(x), model(x))
    assert _bitwise_equal(loaded.pre_logits(x), model.pre_logits(x))
    before, after = mtv.to_scenic(model), mtv.to_scenic(loaded)
    flat_before, flat_after = _flatten(before), _flatten(after)
    assert flat_before.keys() == flat_after.keys()
    assert all(np.array_equal(flat_before[k], flat_after[k]) for k in flat_before)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------------------------ training mode


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate", "stochastic_depth"])
def test_training_mode_is_stochastic_and_eval_is_deterministic(field):
    config = ref.scenic_config(A16, fusion=_cva((1,)), **{field: 0.5})
    model = _model(config)
    x = _input(batch=4)
    eval_1, eval_2 = np.asarray(model(x)), np.asarray(model(x, training=False))
    assert _bitwise_equal(eval_1, eval_2)
    train_1, train_2 = np.asarray(model(x, training=True)), np.asarray(model(x, training=True))
    assert _max_diff(train_1, train_2) > 1e-4, f"{field}: two training calls gave the same output"
    assert _max_diff(train_1, eval_1) > 1e-4, f"{field}: training output equals eval output"
    assert _bitwise_equal(np.asarray(model(x)), eval_1)


def _scenic_rate(layer: int, num_layers: int, rate: float) -> float:
    # Scenic: (lyr / max(num_layers - 1, 1)) * stochastic_depth, per view and in the global encoder.
    return layer / max(num_layers - 1, 1) * rate


def test_stochastic_depth_rates_follow_scenic():
    sd = 0.3
    views = [(8, 2, 16, 2, (4, 4, 4)), (12, 2, 24, 4, (4, 4, 2)), (16, 4, 32, 1, (4, 4, 1))]
    config = ref.scenic_config(views, fusion=_cva((1, 3)), stochastic_depth=sd,
                               global_encoder={**_global(), "num_layers": 3})
    model = _model(config)
    depths = [v[3] for v in views]
    encoder = model.backbone.encoder
    checked = 0
    for layer in range(max(depths)):
        cross = encoder.cross_blocks[layer]
        if layer in (1, 3):
            assert cross is not None
            for (q, kv), drop in zip(cross.pairs, cross.cross_sd, strict=True):
                assert drop.rate == pytest.approx(_scenic_rate(layer, depths[kv], sd)), (layer, q, kv)
                checked += 1
            for i, depth in enumerate(depths):
                if layer < depth:
                    for drop in (cross.sd_msa[i], cross.sd_mlp[i]):
                        assert drop.rate == pytest.approx(_scenic_rate(layer, depth, sd)), (layer, i)
                        checked += 1
            continue
        for i, depth in enumerate(depths):
            block = encoder.blocks[layer][i]
            assert (block is None) == (layer >= depth), (layer, i)
            if block is not None:
                for drop in (block.drop_path_0, block.drop_path_1):
                    assert drop.rate == pytest.approx(_scenic_rate(layer, depth, sd)), (layer, i)
                    checked += 1
    for layer, block in enumerate(model.backbone.global_encoder.blocks):
        assert block.drop_path_0.rate == pytest.approx(_scenic_rate(layer, 3, sd))
        assert block.drop_path_1.rate == pytest.approx(_scenic_rate(layer, 3, sd))
    # cross layer 1: pairs (1,2), (0,1) + msa/mlp of 2 views; layer 3: pairs + view1 only
    assert checked == 2 * 2 + 2 * 2 + (2 + 2) + 2 * 2 + 2 * 1


# ---------------------------------------------------------------------------------- real MTV-B size


def test_mtv_b_k400_parameter_count():
    """Section (a.2) of the reference: 304,270,864 params for 32x224x224 and 400 classes."""
    path = REPO / "configs" / "kinetics" / "k400_mtv_b2_cva.py"
    if path.is_file():
        config = configs_io.load_config(str(path))
        model = mtv.build_model(config)
    else:  # the same config, inline from the reference (views Ti/8, S/4, B/2, CVA at 5 and 11)
        views = [(192, 3, 768, 12, (16, 16, 8)), (384, 6, 1536, 12, (16, 16, 4)),
                 (768, 12, 3072, 12, (16, 16, 2))]
        config = ref.scenic_config(views, fusion=_cva((5, 11)), num_frames=32, stochastic_depth=0.1,
                                   global_encoder={"num_heads": 8, "mlp_dim": 3072, "num_layers": 12,
                                                   "hidden_size": 768, "merge_axis": "channel"})
        model = mtv.build_model(config, num_classes=400, input_shape=(32, 224, 224, 3))
    try:
        assert model.count_params() == 304_270_864
        assert _shapes(model) == ref.param_shapes(config, (32, 224, 224, 3), 400)
    finally:
        del model
        gc.collect()


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("section,bad,good", [
    ("model", "clasifier", "classifier"),
    ("view", "num_head", "num_heads"),
    ("fusion", "fusion_layer", "fusion_layers"),
    ("global", "merge_axes", "merge_axis"),
])
def test_misspelled_config_field(section, bad, good):
    config = ref.scenic_config(A16, fusion=_cva())
    model = config["model"]
    target = {"model": model, "view": model["view_configs"][1], "fusion": model["cross_view_fusion"],
              "global": model["global_encoder_config"]}[section]
    target[bad] = target.pop(good)
    with pytest.raises(ConfigError) as err:
        mtv.build_model(config, num_classes=CLASSES, input_shape=SHAPE)
    assert bad in str(err.value) and good in str(err.value)


def test_unknown_config_field_is_named():
    config = ref.scenic_config(A16, fusion=_cva(), frobnicate=True)
    with pytest.raises(ConfigError, match="frobnicate"):
        mtv.build_model(config, num_classes=CLASSES, input_shape=SHAPE)


@pytest.mark.parametrize("field,value,expected", [
    ("classifier", "cls", "classifier"),
    ("cross_view_fusion", {"type": "mlp", "fusion_layers": [0]}, "type"),
])
def test_bad_config_value_is_named(field, value, expected):
    config = ref.scenic_config(A16, fusion=_cva())
    config["model"][field] = value
    with pytest.raises(ConfigError, match=expected):
        mtv.build_model(config, num_classes=CLASSES, input_shape=SHAPE)


@pytest.mark.parametrize("input_shape,what", [((9, 16, 16, 3), "frames"), ((8, 18, 16, 3), "height"),
                                              ((8, 16, 14, 3), "width")])
def test_tubelet_must_divide_the_input(input_shape, what):
    config = ref.scenic_config(A16, fusion=_cva())
    with pytest.raises(MTVError) as err:
        mtv.build_model(config, num_classes=CLASSES, input_shape=input_shape)
    assert isinstance(err.value, (ConfigError, ShapeError))
    assert what in str(err.value) and "tubelet" in str(err.value)


@pytest.fixture(scope="module")
def small_model():
    return _model(ref.scenic_config(A16, fusion=_cva()))


@pytest.mark.parametrize("shape", [(8, 16, 16, 3), (2, 4, 16, 16, 3), (2, 8, 32, 16, 3), (2, 8, 16, 20, 3),
                                   (2, 8, 16, 16, 1), (1, 2, 8, 16, 16, 3)])
def test_wrong_input_shape_raises_shape_error(small_model, shape):
    with pytest.raises(ShapeError) as err:
        small_model(np.zeros(shape, np.float32))
    message = str(err.value)
    assert str(shape) in message or str(tuple(shape)) in message
    assert "8, 16, 16, 3" in message  # says what the model takes


@pytest.fixture(scope="module")
def checkpoint_case():
    config = ref.scenic_config(A16, fusion=_cva())
    return config, _params(config, seed=5)


def _from_scenic(config, params):
    return mtv.from_scenic(config, params, num_classes=CLASSES, input_shape=SHAPE)


def test_checkpoint_missing_param(checkpoint_case):
    config, params = checkpoint_case
    name = "MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view0_1/value/bias"
    with pytest.raises(CheckpointError, match=name):
        _from_scenic(config, {k: v for k, v in params.items() if k != name})


def test_checkpoint_extra_param(checkpoint_case):
    config, params = checkpoint_case
    name = "MultiviewEncoder/encoderblock_7_view0/LayerNorm_0/scale"
    with pytest.raises(CheckpointError, match=name):
        _from_scenic(config, {**params, name: np.ones(8, np.float32)})


def test_checkpoint_misshaped_param(checkpoint_case):
    config, params = checkpoint_case
    name = "MultiviewEncoder/posembed_input_view1/pos_embedding"
    bad = {**params, name: np.zeros((1, 99, 12), np.float32)}  # the model has 1 + 4x4 tokens per frame
    with pytest.raises(CheckpointError) as err:
        _from_scenic(config, bad)
    assert name in str(err.value) and "99" in str(err.value)


def test_truncated_npz_checkpoint(checkpoint_case, tmp_path):
    config, params = checkpoint_case
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="params.npz"):
        _from_scenic(config, path)


def test_good_npz_checkpoint_loads(checkpoint_case, tmp_path):
    """The truncation above is what fails: the same file, whole, loads and matches the reference."""
    config, params = checkpoint_case
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    x = _input()
    got = np.asarray(_from_scenic(config, path)(x))
    assert np.max(np.abs(got - ref.forward(params, config, x))) < 1e-4
