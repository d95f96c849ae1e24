"""Scenic's fine-tuning recipe, piece by piece: schedule, optimizer, losses, initialisation, checkpoints."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from mtv.errors import CheckpointError, ConfigError
from mtv.training import checkpoints as ckpt_lib
from mtv.training.init_from import convert_pre_linen, init_from_mtv, init_from_vit, zoom_linear
from mtv.training.losses import TrainingModel, head_cross_entropy
from mtv.training.optimizer import ScenicMomentum
from mtv.training.schedules import ScenicSchedule, lr_value, resolve_lr_configs


def tiny_config(frames: int = 8, size: int = 32, classes: int = 5) -> ml_collections.ConfigDict:
    """Two views (tubelets 8x8x4 and 8x8x2), cross-view attention at layer 1, as the cva_2view fixture."""
    c = ml_collections.ConfigDict()
    c.dataset_configs = ml_collections.ConfigDict({"num_frames": frames, "crop_size": size, "num_classes": classes})
    c.model = ml_collections.ConfigDict()
    c.model.classifier = "token"
    c.model.view_configs = [
        ml_collections.ConfigDict({"hidden_size": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 2,
                                   "patches": {"size": (8, 8, 4)}}),
        ml_collections.ConfigDict({"hidden_size": 24, "num_heads": 3, "mlp_dim": 48, "num_layers": 2,
                                   "patches": {"size": (8, 8, 2)}})]
    c.model.cross_view_fusion = ml_collections.ConfigDict({"type": "cross_view_attention", "fusion_layers": (1,),
                                                           "fuse_in_descending_order": True,
                                                           "use_query_config": True})
    c.model.global_encoder_config = ml_collections.ConfigDict({"num_heads": 4, "mlp_dim": 48, "num_layers": 1,
                                                               "hidden_size": 40, "merge_axis": "channel"})
    c.model.dropout_rate = 0.0
    c.model.attention_dropout_rate = 0.0
    c.model.stochastic_depth = 0.0
    return c


# ----------------------------------------------------------------------------------- schedule
def test_compound_schedule_matches_the_written_out_formula():
    cfg = resolve_lr_configs({"factors": "constant * cosine_decay * linear_warmup", "base_learning_rate": 0.4,
                              "warmup_steps": 10, "steps_per_cycle": 110}, steps_per_epoch=11, total_steps=110)
    schedule = ScenicSchedule(cfg)
    for step in (0, 3, 10, 11, 60, 109):
        warm = min(1.0, step / 10)
        cos = 0.5 * (1 + math.cos(math.pi * max(0, step - 10) / (110 - 10)))
        assert float(schedule(step)) == pytest.approx(0.4 * warm * cos, rel=1e-5, abs=1e-7)


def test_warmup_epochs_and_placeholder_cycle_become_steps():
    cfg = resolve_lr_configs({"factors": "constant * linear_warmup", "base_learning_rate": 1.0, "warmup_epochs": 2.5,
                              "steps_per_cycle": 0}, steps_per_epoch=4, total_steps=40)
    assert cfg["warmup_steps"] == 10 and cfg["steps_per_cycle"] == 40
    assert float(lr_value(cfg, 5)) == pytest.approx(0.5)


def test_unknown_factor_is_a_config_error():
    with pytest.raises(ConfigError, match="exponential"):
        resolve_lr_configs({"factors": "constant * exponential", "base_learning_rate": 1.0},
                           steps_per_epoch=1, total_steps=1)


# ---------------------------------------------------------------------------------- optimizer
def _apply(opt, var, grads):
    for g in grads:
        opt.apply_gradients([(tf.constant(g, tf.float32), var)])


def test_momentum_follows_optax_with_a_changing_learning_rate():
    import keras

    rates = [0.5, 0.25, 0.125]

    class Steps(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.gather(tf.constant(rates), tf.cast(step, tf.int32))

    schedule = Steps()
    var = tf.Variable(np.array([1.0, -2.0], np.float32))
    opt = ScenicMomentum(learning_rate=schedule, momentum=0.9)
    grads = [np.array([0.1, 0.2]), np.array([-0.3, 0.1]), np.array([0.05, 0.05])]
    _apply(opt, var, grads)
    w, m = np.array([1.0, -2.0]), np.zeros(2)
    for lr, g in zip(rates, grads, strict=True):  # m <- 0.9 m + g ; w <- w - lr m
        m = 0.9 * m + g
        w = w - lr * m
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)


def test_global_norm_clipping_and_l2_decay():
    var = tf.Variable(np.array([3.0, 4.0], np.float32))
    opt = ScenicMomentum(learning_rate=0.1, momentum=0.0, global_clipnorm=1.0, l2_decay_factor=0.5)
    _apply(opt, var, [np.array([30.0, 40.0])])
    g = np.array([30.0, 40.0]) + 0.5 * np.array([3.0, 4.0])  # L2 gradient joins before clipping
    g = g / np.linalg.norm(g)
    np.testing.assert_allclose(var.numpy(), np.array([3.0, 4.0]) - 0.1 * g, rtol=1e-6)


# ------------------------------------------------------------------------------------- losses
def _numpy_ce(labels, logits, smoothing):
    targets = (1 - smoothing) * labels + smoothing / labels.shape[-1]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -(targets * logp).sum(-1)


def test_label_smoothing_and_masking():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    labels = np.eye(6, dtype=np.float32)[[1, 2, 0, 5]]
    labels[2] = 0.0  # no label for this example
    ce, mask = head_cross_entropy(labels, logits, 0.2)
    expected = _numpy_ce(labels, logits, 0.2)
    np.testing.assert_allclose(np.asarray(ce)[[0, 1, 3]], expected[[0, 1, 3]], rtol=1e-5)
    assert np.asarray(ce)[2] == 0.0 and list(np.asarray(mask)) == [1, 1, 0, 1]


def test_multihead_loss_is_the_mean_of_head_losses_and_an_unlabelled_head_adds_nothing():
    import keras

    rng = np.random.default_rng(1)
    inner = keras.layers.Identity()
    model = TrainingModel(inner, ["verb", "noun"], label_smoothing=0.1)
    logits = {"verb": rng.normal(size=(3, 4)).astype(np.float32), "noun": rng.normal(size=(3, 7)).astype(np.float32)}
    labels = {"verb": np.eye(4, dtype=np.float32)[[0, 3, 1]], "noun": np.eye(7, dtype=np.float32)[[6, 2, 2]]}
    both = float(model.compute_loss(y=labels, y_pred=logits))
    expected = np.mean([_numpy_ce(labels[h], logits[h], 0.1).mean() for h in ("verb", "noun")])
    assert both == pytest.approx(expected, rel=1e-5)
    only_verb = {"verb": labels["verb"], "noun": np.zeros_like(labels["noun"])}  # co-finetuning batch
    assert float(model.compute_loss(y=only_verb, y_pred=logits)) == pytest.approx(
        _numpy_ce(labels["verb"], logits["verb"], 0.1).mean(), rel=1e-5)


# ------------------------------------------------------------------------------ init from ViT
def _vit_params(rng, width: int, layers: int, patch: int, grid: int, heads: int, mlp: int) -> dict:
    """A big_vision-style ViT param tree with pre-Linen module numbers (as vision_transformer's npz)."""
    hd = width // heads
    p = {"embedding/kernel": rng.normal(size=(patch, patch, 3, width)), "embedding/bias": rng.normal(size=width),
         "cls": rng.normal(size=(1, 1, width)),
         "Transformer/posembed_input/pos_embedding": rng.normal(size=(1, 1 + grid * grid, width)),
         "Transformer/encoder_norm/scale": np.ones(width), "Transformer/encoder_norm/bias": np.zeros(width),
         "head/kernel": rng.normal(size=(width, 10)), "head/bias": np.zeros(10)}
    for layer in range(layers):
        b = f"Transformer/encoderblock_{layer}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            p[b + ln + "/scale"] = rng.normal(size=width)
            p[b + ln + "/bias"] = rng.normal(size=width)
        for part in ("query", "key", "value"):
            p[b + f"MultiHeadDotProductAttention_1/{part}/kernel"] = rng.normal(size=(width, heads, hd))
            p[b + f"MultiHeadDotProductAttention_1/{part}/bias"] = rng.normal(size=(heads, hd))
        p[b + "MultiHeadDotProductAttention_1/out/kernel"] = rng.normal(size=(heads, hd, width))
        p[b + "MultiHeadDotProductAttention_1/out/bias"] = rng.normal(size=width)
        p[b + "MlpBlock_3/Dense_0/kernel"] = rng.normal(size=(width, mlp))
        p[b + "MlpBlock_3/Dense_0/bias"] = rng.normal(size=mlp)
        p[b + "MlpBlock_3/Dense_1/kernel"] = rng.normal(size=(mlp, width))
        p[b + "MlpBlock_3/Dense_1/bias"] = rng.normal(size=width)
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def test_pre_linen_names_are_renumbered():
    out = convert_pre_linen({"T/encoderblock_0/MlpBlock_3/Dense_0/kernel": 1, "T/encoderblock_0/LayerNorm_2/scale": 2,
                             "T/encoderblock_0/LayerNorm_0/scale": 3, "T/encoderblock_1/LayerNorm_0/scale": 4})
    assert out == {"T/encoderblock_0/MlpBlock_0/Dense_0/kernel": 1, "T/encoderblock_0/LayerNorm_1/scale": 2,
                   "T/encoderblock_0/LayerNorm_0/scale": 3, "T/encoderblock_1/LayerNorm_0/scale": 4}


def test_zoom_linear_is_exact_on_linear_ramps():
    ramp = np.add.outer(np.arange(4.0), 10 * np.arange(4.0))  # f(i, j) = i + 10 j
    out = zoom_linear(ramp, (7, 10))
    ii, jj = np.meshgrid(np.linspace(0, 3, 7), np.linspace(0, 3, 10), indexing="ij")
    np.testing.assert_allclose(out, ii + 10 * jj, atol=1e-12)


@pytest.mark.parametrize("size_change", ["tile", "resize"])
def test_init_from_vit_checkpoints(tmp_path, size_change):
    import mtv
    from mtv.io import flax_msgpack
    rng = np.random.default_rng(0)
    model = mtv.build_model(tiny_config(), seed=0)
    before = {k: v.numpy().copy() for k, v in model.flax_params().items()}
    # View 0: a 16-px-patch ViT (kernel resized to 8 px; its 2x2 grid -> the view's 4x4), big_vision npz.
    vit0 = _vit_params(rng, 16, 2, patch=16, grid=2, heads=2, mlp=32)
    ramp = np.add.outer(np.arange(16.0), 2 * np.arange(16.0))[:, :, None, None] * np.ones((1, 1, 3, 16))
    vit0["embedding/kernel"] = ramp.astype(np.float32)
    np.savez(tmp_path / "vit0.npz", **{f"params/{k}": v for k, v in vit0.items()})
    # View 1: an exact-size ViT with three layers (one more than the view), Scenic msgpack format.
    vit1 = _vit_params(rng, 24, 3, patch=8, grid=4, heads=3, mlp=48)
    linen = convert_pre_linen(vit1)
    flax_msgpack.write_checkpoint(tmp_path / "checkpoint_7", flax_msgpack.unflatten(linen), step=7)
    init_from_vit(model, [tmp_path / "vit0.npz", tmp_path / "checkpoint_7"],
                  checkpoint_formats=["big_vision", "scenic"], positional_embed_size_change=size_change)
    p = {k: v.numpy() for k, v in model.flax_params().items()}
    k0 = p["embedding_view0/kernel"]  # (t=4, 8, 8, 3, 16): ViT kernel, resized, in temporal slice 4 // 2
    assert np.all(k0[[0, 1, 3]] == 0)
    expected = np.add.outer(np.linspace(0, 15, 8), 2 * np.linspace(0, 15, 8))
    np.testing.assert_allclose(k0[2, :, :, 0, 0], expected, rtol=1e-5)
    k1 = p["embedding_view1/kernel"]  # (t=2, ...): slice 1
    np.testing.assert_allclose(k1[1], linen["embedding/kernel"], rtol=1e-6)
    assert np.all(k1[0] == 0)
    np.testing.assert_allclose(p["cls_view0"], np.tile(vit0["cls"][None], (1, 2, 1, 1)), rtol=1e-6)
    np.testing.assert_allclose(p["cls_view1"], np.tile(vit1["cls"][None], (1, 4, 1, 1)), rtol=1e-6)
    pos0 = p["MultiviewEncoder/posembed_input_view0/pos_embedding"]
    src = vit0["Transformer/posembed_input/pos_embedding"]
    np.testing.assert_allclose(pos0[:, 0], src[:, 0], rtol=1e-6)  # CLS row kept
    if size_change == "tile":
        np.testing.assert_allclose(pos0[0, 1:], np.tile(src[0, 1:], (4, 1)), rtol=1e-6)
    else:
        grid = zoom_linear(src[0, 1:].reshape(2, 2, 16), (4, 4, 16)).reshape(16, 16)
        np.testing.assert_allclose(pos0[0, 1:], grid, rtol=1e-5)
    # Layer 0 is a plain block; layer 1 is fused: its msa/mlp parts come from the ViT's block 1.
    np.testing.assert_allclose(p["MultiviewEncoder/encoderblock_0_view0/MlpBlock_0/Dense_0/kernel"],
                               vit0["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"], rtol=1e-6)
    np.testing.assert_allclose(p["MultiviewEncoder/cross_view_encoderblock_1/msa_view1/query/kernel"],
                               vit1["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(p["MultiviewEncoder/cross_view_encoderblock_1/mlp_ln_view0/scale"],
                               vit0["Transformer/encoderblock_1/LayerNorm_2/scale"], rtol=1e-6)
    # Not restored: cross-view attention, the global encoder, the head.
    for key in ("MultiviewEncoder/cross_view_encoderblock_1/cross_attention_view0_1/query/kernel",
                "global_encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel", "output_projection/kernel"):
        np.testing.assert_array_equal(p[key], before[key])
    assert np.isfinite(np.asarray(model(np.zeros((1, 8, 32, 32, 3), np.float32)))).all()


def test_init_from_vit_rejects_a_wrong_width(tmp_path):
    import mtv

    model = mtv.build_model(tiny_config(), seed=0)
    rng = np.random.default_rng(0)
    vit = _vit_params(rng, 32, 1, patch=8, grid=4, heads=2, mlp=32)
    with pytest.raises(CheckpointError, match="embedding"):
        init_from_vit(model, [vit, vit], checkpoint_formats=["scenic", "scenic"])
    with pytest.raises(ConfigError, match="one per view"):
        init_from_vit(model, [vit], checkpoint_formats=["scenic"])


def test_init_from_mtv_interpolates_cls_tokens_and_replaces_the_head():
    import mtv

    source = mtv.build_model(tiny_config(frames=8, classes=7), seed=1)
    rng = np.random.default_rng(3)
    for var in source.flax_params().values():
        var.assign(rng.normal(size=var.shape).astype(np.float32))
    target = mtv.build_model(tiny_config(frames=16, classes=4), seed=2)
    head_before = target.flax_params()["output_projection/kernel"].numpy().copy()
    restored = {k: v.numpy() for k, v in source.flax_params().items()}
    init_from_mtv(target, restored)
    p = {k: v.numpy() for k, v in target.flax_params().items()}
    np.testing.assert_allclose(p["cls_view0"], zoom_linear(restored["cls_view0"], (1, 4, 1, 16)), rtol=1e-6)
    key = "MultiviewEncoder/encoderblock_0_view1/MlpBlock_0/Dense_1/kernel"
    np.testing.assert_allclose(p[key], restored[key])
    np.testing.assert_array_equal(p["output_projection/kernel"], head_before)


# -------------------------------------------------------------------------------- checkpoints
def test_checkpoints_round_trip_keep_the_newest_and_leave_no_temp_files(tmp_path):
    import mtv

    model = mtv.build_model(tiny_config(), seed=0)
    opt = ScenicMomentum(0.1)
    opt.build(model.trainable_variables)
    for var in opt.variables[1:3]:
        var.assign(np.full(var.shape, 0.5, np.float32))
    opt.iterations.assign(7)
    for step in (3, 5, 7, 9):
        ckpt_lib.save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert [s for s, _ in ckpt_lib.list_checkpoints(tmp_path)] == [7, 9]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("ckpt_")]
    other = mtv.build_model(tiny_config(), seed=5)
    opt2 = ScenicMomentum(0.1)
    opt2.build(other.trainable_variables)
    meta = ckpt_lib.restore_checkpoint(ckpt_lib.latest_checkpoint(tmp_path), other, opt2)
    assert meta["step"] == 9 and int(opt2.iterations.numpy()) == 7
    for key, var in model.flax_params().items():
        np.testing.assert_array_equal(var.numpy(), other.flax_params()[key].numpy())
    np.testing.assert_array_equal(opt2.variables[1].numpy(), 0.5)
    with pytest.raises(CheckpointError):
        ckpt_lib.restore_checkpoint(ckpt_lib.latest_checkpoint(tmp_path),
                                    mtv.build_model(tiny_config(classes=3)), None)
