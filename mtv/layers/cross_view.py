"""Scenic's cross-view attention block: neighbour views attend to each other, then MSA and MLP."""

from __future__ import annotations

import keras

from mtv.layers.attention import MultiHeadAttention
from mtv.layers.common import MlpBlock, StochasticDepth, flax_norm, layer_norm, prefixed


def sd_rate(layer: int, num_layers: int, stochastic_depth: float) -> float:
    """Scenic's linearly growing stochastic-depth rate of `layer` in a stack of `num_layers`."""
    return layer / max(num_layers - 1, 1) * stochastic_depth


def cross_view_pairs(num_views: int, descending: bool) -> list[tuple[int, int]]:
    """(query view, key/value view) pairs in the order Scenic applies them."""
    if descending:
        return [(i - 1, i) for i in range(num_views - 1, 0, -1)]
    return [(i + 1, i) for i in range(num_views - 1)]


@keras.saving.register_keras_serializable(package="mtv")
class CrossViewEncoderBlock(keras.layers.Layer):
    """One fused layer for all views (`cross_view_encoderblock_{l}`).

    `views` is a list of dicts with hidden_size, num_heads, mlp_dim, num_layers.
    """

    def __init__(self, views: list[dict], layer_index: int, descending: bool = True,
                 use_query_config: bool = True, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, stochastic_depth: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.views = [dict(v) for v in views]
        self.layer_index = int(layer_index)
        self.descending = bool(descending)
        self.use_query_config = bool(use_query_config)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.stochastic_depth = float(stochastic_depth)
        n, lyr = len(self.views), self.layer_index
        self.pairs = cross_view_pairs(n, self.descending)
        self.cross_ln = [layer_norm(f"cross_attention_ln_view{i}") for i in range(n)]
        self.cross_attn, self.cross_sd = [], []
        for q, kv in self.pairs:
            src = self.views[q] if self.use_query_config else self.views[kv]
            self.cross_attn.append(MultiHeadAttention(
                src["num_heads"], qkv_features=src["hidden_size"], out_features=self.views[q]["hidden_size"],
                dropout_rate=self.attention_dropout_rate, out_kernel_zeros=True,
                name=f"cross_attention_view{q}_{kv}"))
            # Scenic indexes the rate by the key/value view.
            self.cross_sd.append(StochasticDepth(
                sd_rate(lyr, self.views[kv]["num_layers"], self.stochastic_depth)))
        self.active = [i for i, v in enumerate(self.views) if lyr < v["num_layers"]]
        # Per-view sublayers are lists indexed by view; views whose depth is exhausted hold None.
        self.msa_ln, self.msa, self.mlp_ln, self.mlp, self.sd_msa, self.sd_mlp = ([None] * n for _ in range(6))
        for i in self.active:
            v = self.views[i]
            rate = sd_rate(lyr, v["num_layers"], self.stochastic_depth)
            self.msa_ln[i] = layer_norm(f"msa_ln_view{i}")
            self.msa[i] = MultiHeadAttention(v["num_heads"], dropout_rate=self.attention_dropout_rate,
                                             name=f"msa_view{i}")
            self.mlp_ln[i] = layer_norm(f"mlp_ln_view{i}")
            self.mlp[i] = MlpBlock(v["mlp_dim"], self.dropout_rate, name=f"mlp_view{i}")
            self.sd_msa[i] = StochasticDepth(rate)
            self.sd_mlp[i] = StochasticDepth(rate)
        # Keras tracks layers in lists without holes; the per-view lists above keep None for indexing.
        self.tracked_view_layers = [layer for group in (self.msa_ln, self.msa, self.mlp_ln, self.mlp,
                                                        self.sd_msa, self.sd_mlp)
                                    for layer in group if layer is not None]
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shapes):
        for i, shape in enumerate(input_shapes):
            self.cross_ln[i].build(shape)
        for (q, kv), attn in zip(self.pairs, self.cross_attn, strict=True):
            attn.build(input_shapes[q], input_shapes[kv])
        for i in self.active:
            for sub in (self.msa_ln[i], self.mlp_ln[i], self.mlp[i]):
                sub.build(input_shapes[i])
            self.msa[i].build(input_shapes[i])

    def call(self, xs, training=False):
        xs = list(xs)
        # Every cross attention reads the LN outputs taken before any view is updated.
        zs = [ln(x) for ln, x in zip(self.cross_ln, xs, strict=True)]
        for (q, kv), attn, sd in zip(self.pairs, self.cross_attn, self.cross_sd, strict=True):
            y = attn(zs[q], zs[kv], training=training)
            y = self.dropout(y, training=training)
            xs[q] = xs[q] + sd(y, training=training)
        for i in self.active:
            y = self.msa[i](self.msa_ln[i](xs[i]), training=training)
            y = self.dropout(y, training=training)
            xs[i] = xs[i] + self.sd_msa[i](y, training=training)
        for i in self.active:
            y = self.mlp[i](self.mlp_ln[i](xs[i]), training=training)
            xs[i] = xs[i] + self.sd_mlp[i](y, training=training)
        return xs

    def flax_params(self) -> dict:
        table = {}
        for i, ln in enumerate(self.cross_ln):
            table.update(prefixed(f"cross_attention_ln_view{i}", flax_norm(ln)))
        for (q, kv), attn in zip(self.pairs, self.cross_attn, strict=True):
            table.update(prefixed(f"cross_attention_view{q}_{kv}", attn.flax_params()))
        for i in self.active:
            table.update(prefixed(f"msa_ln_view{i}", flax_norm(self.msa_ln[i])))
            table.update(prefixed(f"msa_view{i}", self.msa[i].flax_params()))
            table.update(prefixed(f"mlp_ln_view{i}", flax_norm(self.mlp_ln[i])))
            table.update(prefixed(f"mlp_view{i}", self.mlp[i].flax_params()))
        return table

    def get_config(self):
        return {**super().get_config(), "views": self.views, "layer_index": self.layer_index,
                "descending": self.descending, "use_query_config": self.use_query_config,
                "dropout_rate": self.dropout_rate, "attention_dropout_rate": self.attention_dropout_rate,
                "stochastic_depth": self.stochastic_depth}
