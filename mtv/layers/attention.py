"""Multi-head dot-product attention with Flax's weight layout (kernels [d_in, heads, head_dim])."""

from __future__ import annotations

import math

import keras
from keras import ops

from mtv.layers.common import init, prefixed


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
        zeros = init("zeros")

        def glorot():  # a fresh initializer per kernel: one instance reused draws the same values each time
            return init(keras.initializers.GlorotUniform())

        self.query_kernel = self.add_weight(name="query_kernel", shape=(d_q, h, hd), initializer=glorot())
        self.query_bias = self.add_weight(name="query_bias", shape=(h, hd), initializer=zeros)
        self.key_kernel = self.add_weight(name="key_kernel", shape=(d_kv, h, hd), initializer=glorot())
        self.key_bias = self.add_weight(name="key_bias", shape=(h, hd), initializer=zeros)
        self.value_kernel = self.add_weight(name="value_kernel", shape=(d_kv, h, hd), initializer=glorot())
        self.value_bias = self.add_weight(name="value_bias", shape=(h, hd), initializer=zeros)
        self.out_kernel = self.add_weight(name="out_kernel", shape=(h, hd, out),
                                          initializer=zeros if self.out_kernel_zeros else glorot())
        self.out_bias = self.add_weight(name="out_bias", shape=(out,), initializer=zeros)

    def call(self, query, kv=None, training=False):
        kv = query if kv is None else kv
        lead = ops.shape(query)[:-2]
        lq = query.shape[-2]
        # Flax divides the projected query by sqrt(head_dim); folding that into the (small) query
        # weights skips a pass over the activations and is the same product up to rounding.
        scale = ops.cast(1.0 / math.sqrt(self.head_dim), self.compute_dtype)
        qh = self._heads(query, self.query_kernel, self.query_bias, scale)
        kh = self._heads(kv, self.key_kernel, self.key_bias)
        vh = self._heads(kv, self.value_kernel, self.value_bias)
        logits = ops.matmul(qh, ops.transpose(kh, (0, 1, 3, 2)))
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        weights = ops.cast(weights, vh.dtype)
        if training and self.dropout_rate > 0:
            weights = self.attn_dropout(weights, training=training)
        o = ops.matmul(weights, vh)  # (batch, heads, lq, head_dim)
        o = ops.reshape(ops.transpose(o, (0, 2, 1, 3)), (-1, self.num_heads * self.head_dim))
        out_kernel = ops.reshape(self.out_kernel, (self.num_heads * self.head_dim, self.out_kernel.shape[-1]))
        y = ops.matmul(o, out_kernel) + self.out_bias
        return ops.reshape(y, tuple(lead) + (lq, y.shape[-1]))

    def _heads(self, x, kernel, bias, scale=None):
        """Projects x (..., length, d) to (batch, heads, length, head_dim), leading axes folded into batch.

        The projection is one 2-D matmul plus bias so TF's graph optimiser fuses the bias into the
        oneDNN matmul; a head-major layout makes the two attention products plain batched matmuls.
        """
        width = self.num_heads * self.head_dim
        w = ops.reshape(kernel, (kernel.shape[0], width))
        b = ops.reshape(bias, (width,))
        if scale is not None:
            w, b = w * scale, b * scale
        y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), w) + b
        y = ops.reshape(y, (-1, x.shape[-2], self.num_heads, self.head_dim))
        return ops.transpose(y, (0, 2, 1, 3))

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
