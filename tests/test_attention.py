"""MultiHeadAttention against a plain NumPy version of Flax's attention, on tiny shapes."""

import keras
import numpy as np
import pytest

from mtv.layers.attention import MultiHeadAttention


def numpy_attention(q_in, kv_in, w: dict, num_heads: int) -> np.ndarray:
    """Flax's MultiHeadDotProductAttention written out with einsum, in float64."""
    q_in, kv_in = q_in.astype(np.float64), kv_in.astype(np.float64)
    q = np.einsum("...ld,dhk->...lhk", q_in, w["query/kernel"]) + w["query/bias"]
    k = np.einsum("...ld,dhk->...lhk", kv_in, w["key/kernel"]) + w["key/bias"]
    v = np.einsum("...ld,dhk->...lhk", kv_in, w["value/kernel"]) + w["value/bias"]
    q = q / np.sqrt(q.shape[-1])
    logits = np.einsum("...qhk,...shk->...hqs", q, k)
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("...hqs,...shk->...qhk", p, v)
    assert o.shape[-2] == num_heads
    return np.einsum("...qhk,hko->...qo", o, w["out/kernel"]) + w["out/bias"]


def _randomise(layer: MultiHeadAttention, rng: np.random.Generator) -> dict:
    """Random non-zero weights (biases included, so a dropped bias shows); returns them by Flax name."""
    params = {}
    for name, var in layer.flax_params().items():
        value = rng.normal(0, 0.3, var.shape).astype(np.float32)
        var.assign(value)
        params[name] = value
    return params


@pytest.mark.parametrize("lead,lq,lk,d_q,d_kv,heads,qkv,out", [
    ((2,), 5, 5, 12, 12, 3, None, None),          # self-attention, one batch axis
    ((1, 3), 7, 7, 16, 16, 4, None, None),        # MTV's (batch, time, tokens, width) layout
    ((2, 2), 6, 9, 8, 20, 2, 8, 8),               # cross-view: wider key view, query's width
    ((1,), 4, 3, 10, 6, 5, 15, 10),               # qkv width differs from both inputs
])
def test_matches_numpy_reference(lead, lq, lk, d_q, d_kv, heads, qkv, out):
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention(heads, qkv_features=qkv, out_features=out)
    q_in = rng.normal(size=lead + (lq, d_q)).astype(np.float32)
    kv_in = rng.normal(size=lead + (lk, d_kv)).astype(np.float32)
    self_attention = lq == lk and d_q == d_kv and qkv is None
    layer.build(q_in.shape, None if self_attention else kv_in.shape)
    params = _randomise(layer, rng)
    if self_attention:
        got = np.asarray(layer(q_in))
        want = numpy_attention(q_in, q_in, params, heads)
    else:
        got = np.asarray(layer(q_in, kv_in))
        want = numpy_attention(q_in, kv_in, params, heads)
    assert got.shape == want.shape == lead + (lq, out or d_q)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weights_keep_flax_names_and_shapes():
    layer = MultiHeadAttention(4, qkv_features=16, out_features=12)
    layer.build((2, 5, 8), (2, 7, 20))
    shapes = {k: tuple(v.shape) for k, v in layer.flax_params().items()}
    assert shapes == {"query/kernel": (8, 4, 4), "query/bias": (4, 4), "key/kernel": (20, 4, 4),
                      "key/bias": (4, 4), "value/kernel": (20, 4, 4), "value/bias": (4, 4),
                      "out/kernel": (4, 4, 12), "out/bias": (12,)}


def test_gradients_reach_every_weight():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    layer = MultiHeadAttention(2)
    x = rng.normal(size=(2, 3, 5, 8)).astype(np.float32)
    layer.build(x.shape)
    _randomise(layer, rng)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(loss, layer.trainable_variables)
    assert len(grads) == 8
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_bfloat16_policy_computes_in_bfloat16():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 6, 16)).astype(np.float32)
    ref = MultiHeadAttention(4)
    ref.build(x.shape)
    params = _randomise(ref, rng)
    layer = MultiHeadAttention(4, dtype="mixed_bfloat16")
    layer.build(x.shape)
    for name, var in layer.flax_params().items():
        var.assign(params[name])
    got = layer(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    want = numpy_attention(x, x, params, 4)
    err = np.abs(np.asarray(keras.ops.cast(got, "float32")) - want).max()
    assert 0 < err < 0.1  # bfloat16 keeps ~3 significant digits, so not exact yet close


def test_a_new_layer_draws_different_query_key_value_and_out_kernels():
    layer = MultiHeadAttention(num_heads=2, name="attn")
    layer.build((1, 4, 8))
    kernels = [layer.query_kernel, layer.key_kernel, layer.value_kernel]
    values = [np.asarray(k).reshape(-1) for k in kernels] + [np.asarray(layer.out_kernel).reshape(-1)]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not np.allclose(values[i], values[j]), (i, j)
