"""The MTV keras.Model: tubelet embeddings per view, multiview encoder, global encoder, head(s)."""

from __future__ import annotations

import copy

import keras
from keras import ops

from mtv.errors import ShapeError
from mtv.layers.common import flax_dense, prefixed
from mtv.layers.global_encoder import GlobalEncoder
from mtv.layers.multiview_encoder import MultiviewEncoder
from mtv.layers.patch_embedding import embed_patches, tubelet_embedding
from mtv.models.spec import derive

POOLS = {"gap": ops.mean, "gmp": ops.max, "gsp": ops.sum}


def pool_tokens(x, classifier: str, axis):
    """Scenic's _extract_encoder_output: token 0, or mean/max/sum over `axis`."""
    if classifier in ("token", "0"):
        return ops.take(x, 0, axis=axis if isinstance(axis, int) else axis[0])
    return POOLS[classifier](x, axis=axis)


@keras.saving.register_keras_serializable(package="mtv")
class MTV(keras.Model):
    """Multiview Transformer, numerically identical to Scenic's `scenic.projects.mtv.model.MTV`.

    Input: float frames (batch, num_frames, height, width, channels) in [-1, 1]. Output: logits
    (batch, num_classes), a dict of logits per head when `split_names` is set, or `pre_logits`
    when `final_endpoint == 'pre_logits'`.
    """

    def __init__(self, spec: dict, **kwargs):
        kwargs.setdefault("name", "mtv")
        super().__init__(**kwargs)
        self.spec = copy.deepcopy(spec)
        self.geometry = derive(self.spec)
        s = self.spec
        self.embeddings = [tubelet_embedding(v["hidden_size"], v["patch_size"], name=f"embedding_view{i}")
                           for i, v in enumerate(s["views"])]
        self._make_encoders_and_head()
        self.build((None, s["num_frames"], *s["image_size"], s["channels"]))

    def _make_encoders_and_head(self) -> None:
        """The multiview encoder, global encoder (with its time-merge projections) and head of the spec."""
        s, geo = self.spec, self.geometry
        views = [{**{k: v[k] for k in ("hidden_size", "num_heads", "mlp_dim", "num_layers")},
                  "tokens_per_frame": g["tokens_per_frame"], "frames_per_step": g["frames_per_step"]}
                 for v, g in zip(s["views"], geo["views"], strict=True)]
        rates = dict(dropout_rate=s["dropout_rate"], attention_dropout_rate=s["attention_dropout_rate"],
                     stochastic_depth=s["stochastic_depth"])
        self.encoder = MultiviewEncoder(views, s["cross_view_fusion"], name="MultiviewEncoder", **rates)
        g = s["global_encoder"]
        self.global_encoder = GlobalEncoder(g["num_layers"], g["num_heads"], g["mlp_dim"],
                                            name="global_encoder", **rates)
        self.global_linear = []
        if g["merge_axis"] == "time":
            self.global_linear = [keras.layers.Dense(g["hidden_size"], name=f"global_encoder_linear_view{i}")
                                  for i in range(len(s["views"]))]
        self.output_projection = None
        if s["final_endpoint"] == "logits":
            self.output_projection = keras.layers.Dense(s["num_classes"], kernel_initializer="zeros",
                                                        name="output_projection")

    # ----------------------------------------------------------------------------------- shapes
    @property
    def input_frames_shape(self) -> tuple:
        """(num_frames, height, width, channels) the model takes."""
        return (self.spec["num_frames"], *self.spec["image_size"], self.spec["channels"])

    def global_width(self) -> int:
        g = self.spec["global_encoder"]
        if g["merge_axis"] == "time":
            return g["hidden_size"]
        return sum(v["hidden_size"] for v in self.spec["views"])

    def _global_input_shape(self) -> tuple:
        s, geo = self.spec, self.geometry
        token = s["classifier"] == "token"
        if s["global_encoder"]["merge_axis"] == "time":
            length = sum(geo["temporal"])
        else:
            length = geo["max_time"]
        width = self.global_width()
        if s["keep_spatiotemporal_features"]:
            grid = geo["views"][0]["grid"]
            return (None, grid[0] * grid[1], length, width)
        return (None, length + (1 if token else 0), width)

    def _view_input_shape(self, view: int, input_shape) -> tuple:
        """The input shape view `view` embeds (every view of MTV sees the same frames)."""
        return tuple(input_shape)

    def build(self, input_shape):
        s, geo = self.spec, self.geometry
        token_shapes = []
        for i, (v, g) in enumerate(zip(s["views"], geo["views"], strict=True)):
            self.embeddings[i].build(self._view_input_shape(i, input_shape))
            if s["classifier"] == "token":
                setattr(self, f"cls_view{i}", self.add_weight(
                    name=f"cls_view{i}", shape=(1, g["temporal_tokens"], 1, v["hidden_size"]),
                    initializer="zeros"))
            token_shapes.append((None, geo["aligned_time"], g["frames_per_step"] * g["tokens_per_frame"],
                                 v["hidden_size"]))
        self.bottleneck = None
        fusion = s["cross_view_fusion"]
        if fusion and fusion["type"] == "bottleneck":
            self.bottleneck = self.add_weight(
                name="bottleneck", shape=(1, geo["aligned_time"], fusion["bottleneck_tokens"],
                                          self.encoder.bottleneck_width()),
                initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.encoder.build(token_shapes)
        for i, lin in enumerate(self.global_linear):
            lin.build((None, s["views"][i]["hidden_size"]))
        self.cls_global = None
        if s["classifier"] == "token":
            self.cls_global = self.add_weight(name="cls_global", shape=(1, 1, self.global_width()),
                                              initializer="zeros")
        self.global_encoder.build(self._global_input_shape())
        if self.output_projection is not None:
            self.output_projection.build((None, self.global_width()))
        self.built = True

    def _check_input(self, x) -> None:
        expected = self.input_frames_shape
        shape = tuple(x.shape)
        if len(shape) != 5:
            raise ShapeError(f"MTV input must be 5-D (batch, frames, height, width, channels) = "
                             f"(B, {', '.join(map(str, expected))}); got shape {shape}")
        for got, want, what in zip(shape[1:], expected, ("frames", "height", "width", "channels"), strict=True):
            if got is not None and got != want:
                raise ShapeError(f"MTV input has {got} {what} but this model takes {want} "
                                 f"(expected (B, {', '.join(map(str, expected))}), got {shape})")

    # ---------------------------------------------------------------------------------- forward
    def tokenize(self, x) -> list:
        """Tubelet embedding + per-frame CLS + temporal alignment: (B, T_aligned, r_i*n_i, c_i) per view."""
        s, geo = self.spec, self.geometry
        batch = ops.shape(x)[0]
        tokens = []
        for i, (v, g) in enumerate(zip(s["views"], geo["views"], strict=True)):
            y = embed_patches(self.embeddings[i], x)
            c, t = v["hidden_size"], g["temporal_tokens"]
            y = ops.reshape(y, (batch, t, g["grid"][0] * g["grid"][1], c))
            if s["classifier"] == "token":
                cls = ops.broadcast_to(ops.cast(getattr(self, f"cls_view{i}"), y.dtype), (batch, t, 1, c))
                y = ops.concatenate([cls, y], axis=2)
            tokens.append(ops.reshape(y, (batch, geo["aligned_time"], -1, c)))
        return tokens

    def global_encode(self, xs, training=False):
        """Merges the per-view outputs and runs the global encoder; returns the pooled feature."""
        s, geo = self.spec, self.geometry
        batch = ops.shape(xs[0])[0]
        keep = s["keep_spatiotemporal_features"]
        feats = []
        for i, (x, g) in enumerate(zip(xs, geo["views"], strict=True)):
            x = ops.reshape(x, (batch, g["temporal_tokens"], g["tokens_per_frame"], x.shape[-1]))
            if not keep:
                x = pool_tokens(x, s["classifier"], axis=2)
            if self.global_linear:
                x = self.global_linear[i](x)
            elif g["temporal_tokens"] != geo["max_time"]:
                reps = geo["max_time"] // g["temporal_tokens"]
                # Whole-sequence tiling (tf.tile), as Scenic: [c0, c1, c0, c1], not [c0, c0, c1, c1].
                x = ops.tile(x, (1, reps) + (1,) * (len(x.shape) - 2))
            feats.append(x)
        x = ops.concatenate(feats, axis=1 if self.global_linear else -1)
        if keep:
            x = ops.transpose(x, (0, 2, 1, 3))  # the encoder runs over time, once per spatial position
            x = self.global_encoder(x, training=training)
            x = ops.transpose(x, (0, 2, 1, 3))
            grid = geo["views"][0]["grid"]
            return ops.reshape(x, (batch, x.shape[1], grid[0], grid[1], x.shape[-1]))
        if self.cls_global is not None:
            cls = ops.broadcast_to(ops.cast(self.cls_global, x.dtype), (batch, 1, x.shape[-1]))
            x = ops.concatenate([cls, x], axis=1)
        x = self.global_encoder(x, training=training)
        return pool_tokens(x, s["classifier"], axis=1)

    def call(self, x, training=False):
        return self.forward(x, training=training, endpoint=self.spec["final_endpoint"])

    def pre_logits(self, x, training=False):
        """The pooled global feature fed to `output_projection` (Scenic's `pre_logits`)."""
        return self.forward(x, training=training, endpoint="pre_logits")

    def forward(self, x, training=False, endpoint: str = "logits"):
        """The whole model up to `endpoint` ('logits' or 'pre_logits')."""
        self._check_input(x)
        s = self.spec
        x = ops.cast(x, self.compute_dtype)
        tokens = self.tokenize(x)
        bottleneck = None
        if self.bottleneck is not None:
            b = self.bottleneck
            bottleneck = ops.broadcast_to(ops.cast(b, tokens[0].dtype), (ops.shape(x)[0],) + tuple(b.shape[1:]))
        tokens = self.encoder(tokens, bottleneck=bottleneck, training=training)
        pre_logits = self.global_encode(tokens, training=training)
        if endpoint == "pre_logits" or self.output_projection is None:
            return pre_logits
        if s["keep_spatiotemporal_features"]:
            pre_logits = pool_tokens(pre_logits, s["classifier"], axis=(1, 2, 3))
        logits = ops.cast(self.output_projection(pre_logits), "float32")
        if s["class_splits"]:
            out, start = {}, 0
            for name, size in zip(s["split_names"], s["class_splits"], strict=True):
                out[name] = logits[:, start:start + size]
                start += size
            return out
        return logits

    # ------------------------------------------------------------------------- weights & config
    def flax_params(self) -> dict:
        """Every weight under its Scenic/Flax path ('/'-joined, no leading 'params/')."""
        table = {}
        for i, emb in enumerate(self.embeddings):
            table.update(prefixed(f"embedding_view{i}", flax_dense(emb)))
            if self.spec["classifier"] == "token":
                table[f"cls_view{i}"] = getattr(self, f"cls_view{i}")
        table.update(prefixed("MultiviewEncoder", self.encoder.flax_params()))
        if self.bottleneck is not None:
            table["bottleneck"] = self.bottleneck
        for i, lin in enumerate(self.global_linear):
            table.update(prefixed(f"global_encoder_linear_view{i}", flax_dense(lin)))
        if self.cls_global is not None:
            table["cls_global"] = self.cls_global
        table.update(prefixed("global_encoder", self.global_encoder.flax_params()))
        if self.output_projection is not None:
            table.update(prefixed("output_projection", flax_dense(self.output_projection)))
        return table

    def get_config(self):
        return {"name": self.name, "spec": copy.deepcopy(self.spec)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
