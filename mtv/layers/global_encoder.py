"""Scenic's global (temporal) encoder: a ViT encoder over the merged per-view features."""

from __future__ import annotations

import keras
from keras import ops

from mtv.layers.common import flax_norm, init, layer_norm, prefixed
from mtv.layers.cross_view import sd_rate
from mtv.layers.encoder_block import EncoderBlock


@keras.saving.register_keras_serializable(package="mtv")
class GlobalEncoder(keras.layers.Layer):
    """posembed (+dropout) -> `num_layers` ViT blocks -> encoder_norm, over the second-to-last axis."""

    def __init__(self, num_layers: int, num_heads: int, mlp_dim: int, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, stochastic_depth: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.stochastic_depth = float(stochastic_depth)
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.blocks = [
            EncoderBlock(self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                         attention_dropout_rate=self.attention_dropout_rate,
                         stochastic_depth=sd_rate(lyr, self.num_layers, self.stochastic_depth),
                         name=f"encoderblock_{lyr}")
            for lyr in range(self.num_layers)]
        self.encoder_norm = layer_norm("encoder_norm")

    def build(self, input_shape):
        length, width = int(input_shape[-2]), int(input_shape[-1])
        self.pos_embedding = self.add_weight(name="posembed_input", shape=(1, length, width),
                                             initializer=init(keras.initializers.RandomNormal(stddev=0.02)))
        for block in self.blocks:
            block.build(input_shape)
        self.encoder_norm.build(input_shape)

    def call(self, x, training=False):
        x = x + ops.cast(self.pos_embedding, x.dtype)
        x = self.dropout(x, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.encoder_norm(x)

    def flax_params(self) -> dict:
        table = {"posembed_input/pos_embedding": self.pos_embedding}
        for lyr, block in enumerate(self.blocks):
            table.update(prefixed(f"encoderblock_{lyr}", block.flax_params()))
        table.update(prefixed("encoder_norm", flax_norm(self.encoder_norm)))
        return table

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "stochastic_depth": self.stochastic_depth}
