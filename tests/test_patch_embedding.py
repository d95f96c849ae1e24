"""Tubelet and spectrogram embeddings as patchify + matmul: same numbers as the strided convolution
Scenic uses, and no convolution (whose filter gradient is pathologically slow on some CPUs) in the
training graph of any model family."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtv
from mtv.layers.patch_embedding import embed_patches, spectrogram_embedding, tubelet_embedding
from mtv.models.builder import build_model
from tests import reference_mtv as ref
from tests.test_model_options import A16, CLASSES, SHAPE, THREE, _bottleneck, _cva, _global
from tests.test_multimodal import inputs_for, tiny_config

# (layer factory, Scenic patch size, input shape without batch)
CASES = {
    "tubelet_4x8x8": (tubelet_embedding, (8, 8, 4), (8, 32, 32, 3)),
    "tubelet_2x4x8_flow": (tubelet_embedding, (4, 8, 2), (6, 16, 24, 2)),
    "tubelet_1x16x16": (tubelet_embedding, (16, 16, 1), (3, 32, 48, 3)),
    "spectrogram_8x8": (spectrogram_embedding, (8, 8), (32, 16, 1)),
    "spectrogram_4x2": (spectrogram_embedding, (4, 2), (12, 10, 3)),
}


def _layer(case: str, hidden: int = 12):
    factory, patch, shape = CASES[case]
    layer = factory(hidden, patch, name="embedding_view0")
    layer.build((None, *shape))
    return layer, shape


def _fill(layer, rng, integer: bool) -> None:
    for var in (layer.kernel, layer.bias):
        if integer:
            var.assign(rng.integers(-3, 4, var.shape).astype("float32"))
        else:
            var.assign(rng.normal(0, 0.3, var.shape).astype("float32"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_identical_to_the_convolution_where_float32_order_cannot_matter(case):
    """Small integers: every partial sum is exact in float32, so any summation order gives the same bits."""
    rng = np.random.default_rng(0)
    layer, shape = _layer(case)
    _fill(layer, rng, integer=True)
    x = rng.integers(-4, 5, (3, *shape)).astype("float32")
    conv, ours = np.asarray(layer(x)), np.asarray(embed_patches(layer, x))
    assert ours.shape == conv.shape
    assert np.array_equal(ours, conv)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_to_the_convolution_and_its_gradients_on_random_floats(case):
    rng = np.random.default_rng(1)
    layer, shape = _layer(case)
    _fill(layer, rng, integer=False)
    x = tf.constant(rng.uniform(-1, 1, (2, *shape)).astype("float32"))
    w = tf.constant(rng.normal(size=layer.compute_output_shape((2, *shape))).astype("float32"))
    grads = []
    for fn in (layer, lambda v: embed_patches(layer, v)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x)
            loss = tf.reduce_sum(out * w)
        grads.append([np.asarray(out), *map(np.asarray, tape.gradient(loss, [x, layer.kernel, layer.bias]))])
    for conv, ours in zip(*grads, strict=True):
        np.testing.assert_allclose(ours, conv, rtol=1e-5, atol=1e-5)


def test_the_kernel_keeps_flax_layout_and_names():
    layer, _ = _layer("tubelet_2x4x8_flow")
    assert tuple(layer.kernel.shape) == (2, 4, 8, 2, 12)  # (t, h, w, C, hidden), as Flax's Conv
    assert [v.path.split("/")[-1] for v in layer.weights] == ["kernel", "bias"]
    layer, _ = _layer("spectrogram_4x2")
    assert tuple(layer.kernel.shape) == (4, 2, 3, 12)


def test_mixed_bfloat16_embeds_in_the_compute_dtype():
    layer, shape = _layer("tubelet_4x8x8")
    x = tf.cast(tf.random.uniform((1, *shape), -1, 1), "bfloat16")
    assert embed_patches(layer, x).dtype == tf.bfloat16


# ----------------------------------------------------------------------- structural guard: no convs

def _mtv(fusion, merge="channel", views=A16, classifier="token"):
    config = ref.scenic_config(views, fusion=fusion, global_encoder=_global(merge), classifier=classifier)
    return mtv.from_scenic(config, ref.init_params(config, SHAPE, CLASSES, np.random.default_rng(0)),
                           num_classes=CLASSES, input_shape=SHAPE)


FAMILIES = {
    "mtv_cross_view_attention": lambda: _mtv(_cva()),
    "mtv_bottleneck": lambda: _mtv(_bottleneck()),
    "mtv_no_fusion_three_views": lambda: _mtv(None, views=THREE),
    "mtv_time_merge_gap": lambda: _mtv(_cva(), merge="time", classifier="gap"),
    "mm_rgb": lambda: build_model(tiny_config(("rgb",)), seed=0),
    "mm_flow": lambda: build_model(tiny_config(("flow",)), seed=0),
    "mm_audio": lambda: build_model(tiny_config(("audio",)), seed=0),
    "mm_rgb_flow_audio_bottleneck": lambda: build_model(
        tiny_config(("rgb", "flow", "audio"), fusion="bottleneck"), seed=0),
}


def training_step_op_types(model, inputs) -> set[str]:
    """Op types in the traced graph of one SGD step (forward, gradients, update), nested functions included."""
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)

    def loss_of(out):
        outs = out.values() if isinstance(out, dict) else [out]
        return tf.add_n([tf.reduce_mean(tf.square(o)) for o in outs])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = loss_of(model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    graph = step.get_concrete_function(inputs).graph.as_graph_def()
    ops_ = {node.op for node in graph.node}
    for function in graph.library.function:
        ops_.update(node.op for node in function.node_def)
    return ops_


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_convolution_in_any_training_graph(family):
    model = FAMILIES[family]()
    inputs = {k: tf.constant(v) for k, v in inputs_for(model, batch=2).items()}
    op_types = training_step_op_types(model, inputs)
    assert "MatMul" in op_types or "BatchMatMulV2" in op_types  # the graph was really inspected
    convs = sorted(op for op in op_types if "Conv" in op)
    assert not convs, f"{family}: convolution ops in the training graph: {convs}"
