"""Multi-head dot-product attention with Flax's weight layout (kernels [d_in, heads, head_dim])."""

from __future__ import annotations

import math

import keras
from keras import ops

from mtv.layers.common import prefixed


@keras.saving.register_keras_serializable(package="mtv")
class MultiHeadAttention(keras.layers.Layer):
    """Attention over the second-to-last axis; any leading axes are batch axes.

    `qkv_features` and `out_features` default to the query width, as in Flax. The output kernel
    initialiser is configurable because Scenic's cross-view attention starts from zeros.
    """

    def __init__(self, num_heads: int, qkv_features: int | None = None, out_features: int | None = None,
                 dropout_rate: float = 0.0, out_kernel_zeros: bool = False, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.qkv_features = qkv_features
        self.out_features = out_features
        self.dropout_rate = float(dropout_rate)
        self.out_kernel_zeros = bool(out_kernel_zeros)
        self.seed = seed
        self.attn_dropout = keras.layers.Dropout(self.dropout_rate, seed=seed)

    def build(self, query_shape, kv_shape=None):
        kv_shape = query_shape if kv_shape is None else kv_shape
        d_q, d_kv = int(query_shape[-1]), int(kv_shape[-1])
        qkv = int(self.qkv_features or d_q)
        out = int(self.out_features or d_q)
        if qkv % self.num_heads:
            raise ValueError(f"{self.name}: qkv width {qkv} is not divisible by num_heads {self.num_heads}")
        self.head_dim = qkv // self.num_heads
        h, hd = self.num_heads, self.head_dim
        glorot = keras.initializers.GlorotUniform()
        self.query_kernel = self.add_weight(name="query_kernel", shape=(d_q, h, hd), initializer=glorot)
        self.query_bias = self.add_weight(name="query_bias", shape=(h, hd), initializer="zeros")
        self.key_kernel = self.add_weight(name="key_kernel", shape=(d_kv, h, hd), initializer=glorot)
        self.key_bias = self.add_weight(name="key_bias", shape=(h, hd), initializer="zeros")
        self.value_kernel = self.add_weight(name="value_kernel", shape=(d_kv, h, hd), initializer=glorot)
        self.value_bias = self.add_weight(name="value_bias", shape=(h, hd), initializer="zeros")
        self.out_kernel = self.add_weight(name="out_kernel", shape=(h, hd, out),
                                          initializer="zeros" if self.out_kernel_zeros else glorot)
        self.out_bias = self.add_weight(name="out_bias", shape=(out,), initializer="zeros")

    def call(self, query, kv=None, training=False):
        kv = query if kv is None else kv
        lead = ops.shape(query)[:-2]
        lq, lk = query.shape[-2], kv.shape[-2]
        # Fold every leading axis into one batch axis so each einsum is a plain batched matmul.
        q = ops.reshape(query, (-1, lq, query.shape[-1]))
        k = ops.reshape(kv, (-1, lk, kv.shape[-1]))
        qh = ops.einsum("bld,dhk->blhk", q, self.query_kernel) + self.query_bias
        kh = ops.einsum("bld,dhk->blhk", k, self.key_kernel) + self.key_bias
        vh = ops.einsum("bld,dhk->blhk", k, self.value_kernel) + self.value_bias
        qh = qh / ops.cast(math.sqrt(self.head_dim), qh.dtype)
        logits = ops.einsum("bqhk,bshk->bhqs", qh, kh)
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        weights = ops.cast(weights, vh.dtype)
        if training and self.dropout_rate > 0:
            weights = self.attn_dropout(weights, training=training)
        o = ops.einsum("bhqs,bshk->bqhk", weights, vh)
        y = ops.einsum("bqhk,hko->bqo", o, self.out_kernel) + self.out_bias
        return ops.reshape(y, tuple(lead) + (lq, y.shape[-1]))

    def flax_params(self) -> dict:
        table = {}
        for part in ("query", "key", "value", "out"):
            table.update(prefixed(part, {"kernel": getattr(self, f"{part}_kernel"),
                                         "bias": getattr(self, f"{part}_bias")}))
        return table

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "qkv_features": self.qkv_features,
                "out_features": self.out_features, "dropout_rate": self.dropout_rate,
                "out_kernel_zeros": self.out_kernel_zeros, "seed": self.seed}
