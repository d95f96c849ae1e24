"""The plain pre-LN ViT block (Scenic's Encoder1DBlock)."""

from __future__ import annotations

import keras

from mtv.layers.attention import MultiHeadAttention
from mtv.layers.common import MlpBlock, StochasticDepth, flax_norm, layer_norm, prefixed


@keras.saving.register_keras_serializable(package="mtv")
class EncoderBlock(keras.layers.Layer):
    """x + SD(drop(MHSA(LN(x)))), then x + SD(MLP(LN(x)))."""

    def __init__(self, num_heads: int, mlp_dim: int, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, stochastic_depth: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.stochastic_depth = float(stochastic_depth)
        self.ln_0 = layer_norm("LayerNorm_0")
        self.attention = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                                            name="MultiHeadDotProductAttention_0")
        self.ln_1 = layer_norm("LayerNorm_1")
        self.mlp = MlpBlock(self.mlp_dim, self.dropout_rate, name="MlpBlock_0")
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.drop_path_0 = StochasticDepth(self.stochastic_depth)
        self.drop_path_1 = StochasticDepth(self.stochastic_depth)

    def build(self, input_shape):
        for sub in (self.ln_0, self.ln_1, self.mlp):
            sub.build(input_shape)
        self.attention.build(input_shape)

    def call(self, x, training=False):
        y = self.attention(self.ln_0(x), training=training)
        y = self.dropout(y, training=training)
        x = x + self.drop_path_0(y, training=training)
        y = self.mlp(self.ln_1(x), training=training)
        return x + self.drop_path_1(y, training=training)

    def flax_params(self) -> dict:
        return {**prefixed("LayerNorm_0", flax_norm(self.ln_0)),
                **prefixed("MultiHeadDotProductAttention_0", self.attention.flax_params()),
                **prefixed("LayerNorm_1", flax_norm(self.ln_1)),
                **prefixed("MlpBlock_0", self.mlp.flax_params())}

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate, "attention_dropout_rate": self.attention_dropout_rate,
                "stochastic_depth": self.stochastic_depth}
