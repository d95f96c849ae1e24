"""Scenic's MultiviewEncoder: per-view ViT stacks fused by cross-view attention or bottleneck tokens.

Tokens are 4-D, (batch, aligned_time, tokens_per_step, width): Scenic vmaps the encoder over the
aligned time axis with shared weights, which is the same as treating that axis as a batch axis.
"""

from __future__ import annotations

import keras
from keras import ops

from mtv.layers.common import flax_dense, init, prefixed
from mtv.layers.cross_view import CrossViewEncoderBlock, sd_rate
from mtv.layers.encoder_block import EncoderBlock


@keras.saving.register_keras_serializable(package="mtv")
class MultiviewEncoder(keras.layers.Layer):
    """Positional embeddings plus `max(num_layers)` layers over all views.

    views: dicts with hidden_size, num_heads, mlp_dim, num_layers, tokens_per_frame, frames_per_step.
    fusion: None or a dict with type ('cross_view_attention' | 'bottleneck'), fusion_layers,
    fuse_in_descending_order, use_query_config, bottleneck_tokens.
    """

    def __init__(self, views: list[dict], fusion: dict | None, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, stochastic_depth: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.views = [dict(v) for v in views]
        self.fusion = dict(fusion) if fusion else None
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.stochastic_depth = float(stochastic_depth)
        fusion = self.fusion or {}
        self.fusion_type = fusion.get("type", "cross_view_attention") if self.fusion else None
        self.fusion_layers = [int(f) for f in fusion.get("fusion_layers", [])]
        self.descending = bool(fusion.get("fuse_in_descending_order", True))
        self.num_layers = max(v["num_layers"] for v in self.views)
        common = dict(dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate)
        # layers[l] is either a CrossViewEncoderBlock or a list (per view) of EncoderBlock / None.
        self.cross_blocks = [None] * self.num_layers
        self.blocks = [[None] * len(self.views) for _ in range(self.num_layers)]
        self.bottleneck_linear = [[None] * len(self.views) for _ in range(self.num_layers)]
        for lyr in range(self.num_layers):
            if self.fusion_type != "bottleneck" and lyr in self.fusion_layers:
                self.cross_blocks[lyr] = CrossViewEncoderBlock(
                    self.views, lyr, descending=self.descending,
                    use_query_config=bool(fusion.get("use_query_config", True)),
                    stochastic_depth=self.stochastic_depth, name=f"cross_view_encoderblock_{lyr}", **common)
                continue
            for i, v in enumerate(self.views):
                if lyr < v["num_layers"]:
                    self.blocks[lyr][i] = EncoderBlock(
                        v["num_heads"], v["mlp_dim"],
                        stochastic_depth=sd_rate(lyr, v["num_layers"], self.stochastic_depth),
                        name=f"encoderblock_{lyr}_view{i}", **common)
        if self.fusion_type == "bottleneck":
            width = self.bottleneck_width()
            for lyr in self.fusion_layers:
                for i in self.view_order():
                    if lyr >= self.views[i]["num_layers"]:
                        continue
                    if self.views[i]["hidden_size"] != width:
                        self.bottleneck_linear[lyr][i] = keras.layers.Dense(
                            self.views[i]["hidden_size"], kernel_initializer=init("glorot_uniform"),
                            bias_initializer=init("zeros"), name=f"bottleneck_linear_{lyr}_view{i}")
                    width = self.views[i]["hidden_size"]
        # Keras tracks layers in flat lists only; the nested tables above are for indexing.
        self.tracked_blocks = [b for row in self.blocks for b in row if b is not None]
        self.tracked_cross_blocks = [b for b in self.cross_blocks if b is not None]
        self.tracked_linears = [b for row in self.bottleneck_linear for b in row if b is not None]

    def view_order(self) -> list[int]:
        """Order in which bottleneck fusion visits the views."""
        order = list(range(len(self.views)))
        return order[::-1] if self.descending else order

    def bottleneck_width(self) -> int:
        """Width of the learned bottleneck tokens: the first view the bottleneck visits."""
        return self.views[self.view_order()[0]]["hidden_size"]

    def build(self, input_shapes):
        self.pos_embeddings = []
        for i, v in enumerate(self.views):
            self.pos_embeddings.append(self.add_weight(
                name=f"posembed_input_view{i}", shape=(1, v["tokens_per_frame"], v["hidden_size"]),
                initializer=init(keras.initializers.RandomNormal(stddev=0.02))))
        shapes = [tuple(s) for s in input_shapes]
        m = int((self.fusion or {}).get("bottleneck_tokens", 0) or 0)
        width = self.bottleneck_width() if self.fusion_type == "bottleneck" else None
        for lyr in range(self.num_layers):
            if self.cross_blocks[lyr] is not None:
                self.cross_blocks[lyr].build(shapes)
                continue
            for i in (self.view_order() if self.fusion_type == "bottleneck" else range(len(self.views))):
                block = self.blocks[lyr][i]
                if block is None:
                    continue
                shape = shapes[i]
                if self.fusion_type == "bottleneck" and lyr in self.fusion_layers:
                    lin = self.bottleneck_linear[lyr][i]
                    if lin is not None:
                        lin.build(shape[:-2] + (m, width))
                        width = self.views[i]["hidden_size"]
                    shape = shape[:-2] + (shape[-2] + m, shape[-1])
                block.build(shape)

    def add_position_embeddings(self, xs: list) -> list:
        """Adds each view's spatial table to every frame of every aligned step."""
        out = []
        for x, v, pos in zip(xs, self.views, self.pos_embeddings, strict=True):
            r, n, c = v["frames_per_step"], v["tokens_per_frame"], v["hidden_size"]
            lead = ops.shape(x)[:2]
            y = ops.reshape(x, (-1, r, n, c)) + ops.cast(pos, x.dtype)
            out.append(ops.reshape(y, tuple(lead) + (r * n, c)))
        return out

    def call(self, xs, bottleneck=None, training=False):
        xs = self.add_position_embeddings(list(xs))
        for lyr in range(self.num_layers):
            if self.cross_blocks[lyr] is not None:
                xs = self.cross_blocks[lyr](xs, training=training)
                continue
            order = self.view_order() if self.fusion_type == "bottleneck" else range(len(self.views))
            for i in order:
                block = self.blocks[lyr][i]
                if block is None:
                    continue
                fused = self.fusion_type == "bottleneck" and lyr in self.fusion_layers
                if fused:
                    lin = self.bottleneck_linear[lyr][i]
                    if lin is not None:
                        bottleneck = lin(bottleneck)
                    n = xs[i].shape[-2]
                    y = block(ops.concatenate([xs[i], ops.cast(bottleneck, xs[i].dtype)], axis=-2),
                              training=training)
                    xs[i], bottleneck = y[..., :n, :], y[..., n:, :]
                else:
                    xs[i] = block(xs[i], training=training)
        return xs

    def flax_params(self) -> dict:
        table = {}
        for i, pos in enumerate(self.pos_embeddings):
            table[f"posembed_input_view{i}/pos_embedding"] = pos
        for lyr in range(self.num_layers):
            if self.cross_blocks[lyr] is not None:
                table.update(prefixed(f"cross_view_encoderblock_{lyr}", self.cross_blocks[lyr].flax_params()))
            for i in range(len(self.views)):
                if self.blocks[lyr][i] is not None:
                    table.update(prefixed(f"encoderblock_{lyr}_view{i}", self.blocks[lyr][i].flax_params()))
                if self.bottleneck_linear[lyr][i] is not None:
                    table.update(prefixed(f"bottleneck_linear_{lyr}_view{i}",
                                          flax_dense(self.bottleneck_linear[lyr][i])))
        return table

    def get_config(self):
        return {**super().get_config(), "views": self.views, "fusion": self.fusion,
                "dropout_rate": self.dropout_rate, "attention_dropout_rate": self.attention_dropout_rate,
                "stochastic_depth": self.stochastic_depth}
