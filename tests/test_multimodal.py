"""M&M (MTVClassifier on MMBackbone): every modality subset, RGB-only parity with MTV, init from MTV, configs,
errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtv.errors import CheckpointError, ConfigError, ShapeError
from mtv.io.configs import load_config
from mtv.io.scenic import assign_flax_params
from mtv.models.builder import build_model
from mtv.models.mm_backbone import MMBackbone
from mtv.models.mtv_backbone import MTVBackbone
from mtv.models.mtv_classifier import MTVClassifier
from mtv.models.spec import HEAD_FIELDS, spec_from_config
from mtv.training.multimodal_init import init_from_mtv, zoom_linear

REPO = Path(__file__).resolve().parents[1]
SUBSETS = [("rgb",), ("flow",), ("audio",), ("rgb", "flow"), ("rgb", "audio"), ("flow", "audio"),
           ("rgb", "flow", "audio")]


def view(hidden, heads, patch, layers=2):
    return {"hidden_size": hidden, "num_heads": heads, "mlp_dim": 2 * hidden, "num_layers": layers,
            "patches": {"size": list(patch)}}


def tiny_config(modalities=("rgb", "flow", "audio"), fusion="cross_view_attention", class_splits=(5, 3)):
    """8 frames of 16x16; RGB views as the cva_2view fixture's; flow one view, audio 32x16 log-mel."""
    fuse = {"type": fusion, "fusion_layers": [1], "fuse_in_descending_order": True, "use_query_config": True}
    if fusion == "bottleneck":
        fuse["bottleneck_tokens"] = 2
    model = {"classifier": "token", "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "stochastic_depth": 0.0,
             "cross_view_fusion": fuse, "modalities": {},
             "global_encoder_config": {"num_heads": 2, "mlp_dim": 32, "num_layers": 1, "hidden_size": 16,
                                       "merge_axis": "channel"}}
    if "rgb" in modalities:
        model["view_configs"] = [view(16, 2, (8, 8, 4)), view(24, 3, (8, 8, 2))]
        model["modalities"]["rgb"] = {}
    if "flow" in modalities:
        model["modalities"]["flow"] = {"view_configs": [view(16, 2, (8, 8, 4))], "channels": 2}
    if "audio" in modalities:
        model["modalities"]["audio"] = {"view_configs": [view(24, 3, (8, 8))], "mel_bins": 16, "num_frames": 32}
    return {"model": model, "dataset_configs": {"num_frames": 8, "crop_size": 16, "class_splits": list(class_splits),
                                                "split_names": ["noun", "verb"]}}


def inputs_for(model, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.uniform(-1, 1, (batch, *shape)).astype("float32") for m, shape in model.input_shapes.items()}


def randomize(model, seed=0, scale=0.2):
    """Non-zero weights everywhere (Scenic zero-initialises the head and cross-attention outputs)."""
    rng = np.random.default_rng(seed)
    for key, var in sorted(model.flax_params().items()):
        value = rng.normal(0.0, scale, var.shape)
        if key.endswith("/scale"):
            value += 1.0
        var.assign(value.astype("float32"))


def logits_of(out):
    return np.concatenate([np.asarray(out["noun"]), np.asarray(out["verb"])], axis=-1)


@pytest.fixture(scope="module")
def full_model():
    model = build_model(tiny_config(), seed=0)
    randomize(model, seed=1)
    return model


# ------------------------------------------------------------------------------------------ building


@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_each_subset_builds_and_runs(modalities):
    model = build_model(tiny_config(modalities), seed=0)
    assert model.modalities == list(modalities)
    out = model(inputs_for(model))
    assert set(out) == {"noun", "verb"}
    assert tuple(out["noun"].shape) == (2, 5) and tuple(out["verb"].shape) == (2, 3)
    params = model.flax_params()
    indices = model.view_indices()
    assert sum(len(v) for v in indices.values()) == len(model.spec["views"])
    for name, views in indices.items():
        for i in views:
            rank = 4 if name == "audio" else 5
            assert len(params[f"embedding_view{i}/kernel"].shape) == rank
    if "flow" in modalities:
        assert params[f"embedding_view{indices['flow'][0]}/kernel"].shape[3] == 2


def test_bottleneck_fusion_over_all_streams():
    model = build_model(tiny_config(fusion="bottleneck"), seed=0)
    randomize(model, seed=3)
    params = model.flax_params()
    # Descending order visits the audio view (last, width 24) first.
    assert tuple(params["bottleneck"].shape) == (1, 2, 2, 24)
    assert "MultiviewEncoder/bottleneck_linear_1_view2/kernel" in params  # 24 -> flow's 16
    x = inputs_for(model)
    base = logits_of(model(x))
    x["audio"] = x["audio"] + 0.5
    assert np.abs(logits_of(model(x)) - base).max() > 1e-4


def test_real_epic_heads_slice_one_dense():
    model = build_model(tiny_config(("rgb", "audio"), class_splits=(300, 97)), seed=0)
    randomize(model, seed=2)
    x = inputs_for(model, batch=3)
    out = model(x)
    assert tuple(out["noun"].shape) == (3, 300) and tuple(out["verb"].shape) == (3, 97)
    kernel = model.flax_params()["output_projection/kernel"].numpy()
    bias = model.flax_params()["output_projection/bias"].numpy()
    assert kernel.shape == (16 + 24 + 24, 397)
    full = np.asarray(model.pre_logits(x)) @ kernel + bias
    np.testing.assert_allclose(np.asarray(out["noun"]), full[:, :300], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["verb"]), full[:, 300:], atol=1e-5)


# ---------------------------------------------------------------------------------- parity with MTV


def _on_mm_backbone(model):
    """The same spec and weights with the M&M backbone class (which an RGB-only spec does not need)."""
    spec = model.spec
    twin = MTVClassifier(MMBackbone(spec), **{k: spec[k] for k in HEAD_FIELDS})
    assign_flax_params(twin, {k: v.numpy() for k, v in model.flax_params().items()})
    return twin


def test_rgb_only_is_mtv_on_the_scenic_fixture(shared_dir):
    case = shared_dir / "fixtures" / "scenic_mtv" / "cva_2view"
    config = json.loads((case / "config.json").read_text())
    mm_config = copy.deepcopy(config)
    mm_config["config"]["model"]["modalities"] = {"rgb": {}}
    model = build_model(mm_config)
    assert model.spec == spec_from_config(config)
    assert type(model.backbone) is MTVBackbone  # one spec, one model: RGB alone is MTV
    with np.load(case / "params.npz") as data:
        flat = {k: data[k] for k in data.files}
    assign_flax_params(model, flat)
    mm = _on_mm_backbone(model)
    x = np.load(case / "input.npy")
    ours, theirs = np.asarray(mm({"rgb": x})), np.asarray(model(x))
    assert np.abs(ours - theirs).max() <= 1e-6
    np.testing.assert_allclose(ours, np.load(case / "logits.npy"), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mm(x)), ours)  # a bare array is fine with one stream


def test_rgb_only_matches_mtv_with_bottleneck_fusion():
    # The fixture covers cross-view attention; bottleneck fusion takes the other path through the encoder.
    model = build_model(tiny_config(("rgb",), fusion="bottleneck"), seed=0)
    randomize(model, seed=4)
    mm = _on_mm_backbone(model)
    x = inputs_for(model, batch=2, seed=5)
    assert np.abs(logits_of(mm(x)) - logits_of(model(x["rgb"]))).max() <= 1e-6


def test_each_modality_changes_the_output(full_model):
    x = inputs_for(full_model, seed=6)
    base = logits_of(full_model(x))
    for name in ("rgb", "flow", "audio"):
        changed = dict(x)
        changed[name] = np.random.default_rng(7).uniform(-1, 1, x[name].shape).astype("float32")
        assert np.abs(logits_of(full_model(changed)) - base).max() > 1e-4, name


# ------------------------------------------------------------------------------------- save & load


def test_keras_round_trip_is_exact(full_model, tmp_path):
    path = tmp_path / "mm.keras"
    full_model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MTVClassifier) and type(loaded.backbone) is MMBackbone
    assert loaded.spec == full_model.spec
    x = inputs_for(full_model, seed=8)
    np.testing.assert_array_equal(logits_of(loaded(x)), logits_of(full_model(x)))
    assert list(loaded.flax_params()) == list(full_model.flax_params())


def test_preset_round_trip(full_model, tmp_path):
    from mtv.io.presets import load_preset, save_preset

    save_preset(full_model, tmp_path / "mm_preset", metadata={"name": "tiny"})
    loaded = load_preset(tmp_path / "mm_preset")
    assert isinstance(loaded, MTVClassifier) and type(loaded.backbone) is MMBackbone
    x = inputs_for(full_model, seed=9)
    np.testing.assert_array_equal(logits_of(loaded(x)), logits_of(full_model(x)))


# ------------------------------------------------------------------------------------ init from MTV


def _random_mtv(seed=10):
    mtv = MTVClassifier.from_spec(spec_from_config(tiny_config(("rgb",))))
    randomize(mtv, seed=seed)
    return mtv


def test_init_from_mtv_model_copies_rgb_and_adapts_flow_and_audio():
    mtv = _random_mtv()
    src = {k: v.numpy() for k, v in mtv.flax_params().items()}
    model = build_model(tiny_config(), seed=0)
    before = {k: v.numpy() for k, v in model.flax_params().items()}
    report = init_from_mtv(model, mtv)
    got = {k: v.numpy() for k, v in model.flax_params().items()}
    # RGB stream: by name, including the layer fused by cross-view attention.
    for key in ("embedding_view0/kernel", "cls_view1", "MultiviewEncoder/posembed_input_view1/pos_embedding",
                "MultiviewEncoder/encoderblock_0_view1/MlpBlock_0/Dense_0/kernel",
                "MultiviewEncoder/cross_view_encoderblock_1/msa_view0/query/kernel",
                "MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view0_1/out/kernel"):
        np.testing.assert_array_equal(got[key], src[key])
    # Flow (view 2, same size as RGB view 0): blocks from view 0; kernel = channel mean, repeated.
    assert report["view_map"] == {0: 0, 1: 1, 2: 0, 3: 1}
    np.testing.assert_array_equal(got["MultiviewEncoder/encoderblock_0_view2/LayerNorm_0/scale"],
                                  src["MultiviewEncoder/encoderblock_0_view0/LayerNorm_0/scale"])
    np.testing.assert_array_equal(got["MultiviewEncoder/cross_view_encoderblock_1/mlp_view2/Dense_1/kernel"],
                                  src["MultiviewEncoder/cross_view_encoderblock_1/mlp_view0/Dense_1/kernel"])
    k0 = src["embedding_view0/kernel"]  # (4, 8, 8, 3, 16)
    flow = got["embedding_view2/kernel"]
    assert flow.shape == (4, 8, 8, 2, 16)
    for c in range(2):
        np.testing.assert_allclose(flow[..., c, :], (k0[..., 0, :] + k0[..., 1, :] + k0[..., 2, :]) / 3, atol=1e-6)
    np.testing.assert_array_equal(got["embedding_view2/bias"], src["embedding_view0/bias"])
    # Audio (view 3, same size as RGB view 1): 2-D kernel = sum over time of the channel mean.
    k1 = src["embedding_view1/kernel"]  # (2, 8, 8, 3, 24)
    audio = got["embedding_view3/kernel"]
    assert audio.shape == (8, 8, 1, 24)
    np.testing.assert_allclose(audio[:, :, 0], sum(k1[t].mean(axis=2) for t in range(2)), atol=1e-5)
    # Audio positional table: CLS row kept, the 2x2 grid's rows averaged (the audio grid is 1x2).
    pos_src = src["MultiviewEncoder/posembed_input_view1/pos_embedding"]  # (1, 5, 24)
    pos = got["MultiviewEncoder/posembed_input_view3/pos_embedding"]  # (1, 3, 24)
    np.testing.assert_array_equal(pos[0, 0], pos_src[0, 0])
    np.testing.assert_allclose(pos[0, 1], (pos_src[0, 1] + pos_src[0, 3]) / 2, atol=1e-6)
    np.testing.assert_allclose(pos[0, 2], (pos_src[0, 2] + pos_src[0, 4]) / 2, atol=1e-6)
    # Links to the new streams and the wider global encoder keep their initialisation.
    for key in ("MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view1_2/out/kernel",
                "MultiviewEncoder/cross_view_encoderblock_1/cross_attention_ln_view3/scale",
                "global_encoder/encoderblock_0/MlpBlock_0/Dense_0/bias", "output_projection/kernel"):
        np.testing.assert_array_equal(got[key], before[key])
        assert key in report["initialised"]
    assert not np.any(got["MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view1_2/out/kernel"])


def test_init_of_an_rgb_only_model_reproduces_mtv():
    mtv = _random_mtv(seed=11)
    model = build_model(tiny_config(("rgb",)), seed=0)
    report = init_from_mtv(model, mtv, restore_output_projection=True)
    assert report["initialised"] == [] and report["adapted"] == {}
    x = inputs_for(model, seed=12)
    np.testing.assert_array_equal(logits_of(model(x)), logits_of(mtv(x["rgb"])))


def test_init_from_scenic_params_resizes_the_positional_grid(shared_dir):
    # The fixture's params come from real Scenic at 32x32 input (4x4 grid); our model takes 16x16 (2x2).
    case = shared_dir / "fixtures" / "scenic_mtv" / "cva_2view"
    with np.load(case / "params.npz") as data:
        src = {k: data[k] for k in data.files}
    model = build_model(tiny_config(("rgb", "flow")), seed=0)
    report = init_from_mtv(model, case / "params.npz")
    pos = model.flax_params()["MultiviewEncoder/posembed_input_view0/pos_embedding"].numpy()
    table = src["MultiviewEncoder/posembed_input_view0/pos_embedding"]
    grid = table[0, 1:].reshape(4, 4, -1)
    np.testing.assert_array_equal(pos[0, 0], table[0, 0])
    # Linear resizing keeps the corners of the grid.
    np.testing.assert_allclose(pos[0, 1:].reshape(2, 2, -1), grid[::3, ::3], atol=1e-6)
    assert "posembed_input_view0" in " ".join(report["adapted"])
    np.testing.assert_array_equal(model.flax_params()["embedding_view1/kernel"].numpy(), src["embedding_view1/kernel"])


def test_init_rejects_a_stream_without_a_source_view_of_its_size():
    config = tiny_config(("rgb", "audio"))
    config["model"]["modalities"]["audio"]["view_configs"] = [view(32, 4, (8, 8))]
    model = build_model(config, seed=0)
    with pytest.raises(CheckpointError, match="view 2 \\(audio"):
        init_from_mtv(model, _random_mtv())


def test_zoom_linear_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    a = np.random.default_rng(0).normal(size=(4, 3, 5))
    np.testing.assert_allclose(zoom_linear(a, (7, 3, 2)), ndimage.zoom(a, (7 / 4, 1, 2 / 5), order=1), atol=1e-12)


# ------------------------------------------------------------------------------------------ training


def test_training_step_reaches_every_stream(full_model):
    model = MTVClassifier.from_config(full_model.get_config())
    for dst, src in zip(model.flax_params().values(), full_model.flax_params().values(), strict=True):
        dst.assign(src)
    x = inputs_for(model, batch=2, seed=13)
    labels = {"noun": np.array([1, 4]), "verb": np.array([0, 2])}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = loss_fn(labels["noun"], out["noun"]) + loss_fn(labels["verb"], out["verb"])
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    norms = {v.path: float(tf.norm(g)) for v, g in zip(model.trainable_variables, grads, strict=True)}
    for name, views in model.view_indices().items():
        for i in views:
            kernel = model.flax_params()[f"embedding_view{i}/kernel"]
            assert norms[kernel.path] > 0, f"no gradient reaches the {name} stream"
    before = model.flax_params()["embedding_view3/kernel"].numpy()
    keras.optimizers.SGD(0.1).apply(grads, model.trainable_variables)
    assert np.abs(model.flax_params()["embedding_view3/kernel"].numpy() - before).max() > 0


# -------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_shape_errors_naming_the_problem(full_model):
    x = inputs_for(full_model)
    with pytest.raises(ShapeError, match="lacks modality 'audio'"):
        full_model({k: v for k, v in x.items() if k != "audio"})
    with pytest.raises(ShapeError, match="'flow' has 3 channels but this model takes 2"):
        full_model(x | {"flow": np.zeros((2, 8, 16, 16, 3), "float32")})
    with pytest.raises(ShapeError, match="unknown modality 'depth'"):
        full_model(x | {"depth": x["rgb"]})
    with pytest.raises(ShapeError, match="'audio' has 31 time frames"):
        full_model(x | {"audio": np.zeros((2, 31, 16, 1), "float32")})
    with pytest.raises(ShapeError, match="batch size"):
        full_model(x | {"audio": x["audio"][:1]})
    with pytest.raises(ShapeError, match="takes a dict"):
        full_model(x["rgb"])
    rgb_audio = build_model(tiny_config(("rgb", "audio")), seed=0)
    with pytest.raises(ShapeError, match="no flow stream"):
        rgb_audio(inputs_for(rgb_audio) | {"flow": x["flow"]})


def _with(config, path, value):
    config = copy.deepcopy(config)
    node = config
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return config


@pytest.mark.parametrize("path,value,message", [
    ("model.modalities.depth", {}, "unknown modality 'depth'"),
    ("model.modalities.audio.mel_bin", 16, "unknown field 'model.modalities.audio.mel_bin'.*mel_bins"),
    ("dataset_configs.audio", {"num_frame": 32}, "unknown field 'dataset_configs.audio.num_frame'"),
    ("dataset_configs.flow", {"bounds": 20}, "unknown field 'dataset_configs.flow.bounds'"),
    ("model.modalities.audio.num_frames", 36, "patch time frames 8 does not divide .* 36"),
    ("model.modalities.audio.num_frames", 24, "3 temporal tokens, not a multiple of the aligned time 2"),
    ("model.modalities.flow.view_configs", [view(16, 2, (8, 8))], "must be \\(height, width, time\\)"),
    ("model.modalities.audio.variant", "B/16", "both 'variant' and 'view_configs'"),
    ("model.global_encoder_config.num_heads", 3, "not divisible by .*num_heads 3"),
])
def test_bad_configs_raise_config_errors(path, value, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_config(_with(tiny_config(), path, value))


def test_audio_sizes_must_agree_between_model_and_dataset():
    config = _with(tiny_config(), "dataset_configs.audio", {"num_frames": 64, "num_mel_bins": 16})
    with pytest.raises(ConfigError, match="disagree on the audio frames"):
        spec_from_config(config)
    del config["model"]["modalities"]["audio"]["num_frames"]
    assert spec_from_config(config)["modalities"]["audio"]["num_frames"] == 64


def test_audio_variant_string():
    config = tiny_config(("rgb", "audio"))
    config["model"]["modalities"]["audio"] = {"variant": "Ti/8x4", "num_frames": 32, "mel_bins": 16}
    spec = spec_from_config(config)
    audio = spec["views"][-1]
    assert (audio["modality"], audio["hidden_size"], audio["num_layers"], audio["patch_size"]) == ("audio", 192, 12,
                                                                                                   [8, 4])


# ----------------------------------------------------------------------------------------- configs

MM_CONFIGS = {"epic_mm_b2_rgb_flow_audio": ["rgb", "flow", "audio"], "epic_mm_b2_rgb_audio": ["rgb", "audio"],
              "epic_mm_b2_rgb_flow": ["rgb", "flow"]}


def _dotted(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(MM_CONFIGS))
def test_mm_configs_extend_the_epic_mtv_config(name):
    config = load_config(str(REPO / "configs" / "epic_kitchens" / f"{name}.py"))
    base = _dotted(load_config(str(REPO / "configs" / "epic_kitchens" / "epic_mtv_b2_cva.py")).to_dict())
    ours = _dotted(config.to_dict())
    added = set(ours) - set(base)
    assert set(base) <= set(ours)
    assert all(k.startswith(("model.modalities.", "dataset_configs.audio.", "dataset_configs.flow.")) for k in added)
    changed = {k for k in base if k not in ("experiment_name", "model_name") and str(base[k]) != str(ours[k])}
    assert changed == set()
    spec = spec_from_config(config)
    assert list(spec["modalities"]) == MM_CONFIGS[name]
    assert spec["class_splits"] == [300, 97] and spec["split_names"] == ["noun", "verb"]
    assert spec["modalities"]["rgb"] == {"num_frames": 64, "image_size": [224, 224], "channels": 3}
    if "audio" in spec["modalities"]:
        assert spec["modalities"]["audio"] == {"num_frames": 128, "mel_bins": 128, "channels": 1}


def test_plain_mtv_config_gives_the_rgb_only_spec():
    config = load_config(str(REPO / "configs" / "epic_kitchens" / "epic_mtv_b2_cva.py"))
    spec = spec_from_config(config)
    assert list(spec["modalities"]) == ["rgb"] and {v["modality"] for v in spec["views"]} == {"rgb"}
    config.model.modalities = {"rgb": {}}
    assert spec_from_config(config) == spec
