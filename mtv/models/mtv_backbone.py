"""The MTV backbone: tubelet embeddings per view -> multiview encoder -> global encoder -> pre_logits."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import keras
from keras import ops

from mtv.errors import ConfigError, ShapeError
from mtv.layers.common import flax_dense, init, prefixed
from mtv.layers.global_encoder import GlobalEncoder
from mtv.layers.multiview_encoder import MultiviewEncoder
from mtv.layers.patch_embedding import embed_patches, tubelet_embedding
from mtv.models.spec import HEAD_FIELDS, MODALITIES, derive, stream_views, to_plain

POOLS = {"gap": ops.mean, "gmp": ops.max, "gsp": ops.sum}
_AXES = {"rgb": ("frames", "height", "width", "channels"), "flow": ("frames", "height", "width", "channels"),
         "audio": ("time frames", "mel bins", "channels")}


def pool_tokens(x, classifier: str, axis):
    """Scenic's _extract_encoder_output: token 0, or mean/max/sum over `axis`."""
    if classifier in ("token", "0"):
        return ops.take(x, 0, axis=axis if isinstance(axis, int) else axis[0])
    return POOLS[classifier](x, axis=axis)


@keras.saving.register_keras_serializable(package="mtv")
class MTVBackbone(keras.Model):
    """Multiview Transformer up to pre_logits, numerically Scenic's `scenic.projects.mtv.model.MTV`.

    Input: `input_shapes` names the inputs, {'rgb': (T, H, W, C)} for MTV: float frames in [-1, 1]
    of shape (batch, T, H, W, C), as a bare tensor or a dict {'rgb': frames}. Output: the pooled
    global feature (batch, width), or the (batch, t, h, w, width) feature map when
    `keep_spatiotemporal_features` is set. `spec` is a spec of `mtv.models.spec` (its head fields
    are ignored).
    """

    #: The streams this class can take; M&M widens it.
    SUPPORTED_MODALITIES: tuple[str, ...] = ("rgb",)

    def __init__(self, spec: dict, **kwargs):
        kwargs.setdefault("name", "mtv_backbone")
        super().__init__(**kwargs)
        self.spec = {k: v for k, v in copy.deepcopy(dict(spec)).items() if k not in HEAD_FIELDS}
        self.geometry = derive(self.spec)
        extra = [m for m in self.spec["modalities"] if m not in self.SUPPORTED_MODALITIES]
        if extra:
            raise ConfigError(f"{type(self).__name__} takes only {list(self.SUPPORTED_MODALITIES)}; this spec has "
                              f"the {extra[0]!r} stream (use mtv.models.mm_backbone.MMBackbone or build_model)")
        self.modalities = [m for m in MODALITIES if m in self.spec["modalities"]]
        self.embeddings = [self._make_embedding(i, v) for i, v in enumerate(self.spec["views"])]
        self._make_encoders()
        self.build({m: (None, *shape) for m, shape in self.input_shapes.items()})

    # ------------------------------------------------------------------------- what M&M overrides
    @property
    def input_shapes(self) -> dict[str, tuple]:
        """Input name -> shape without the batch axis: {'rgb': (num_frames, height, width, channels)}."""
        s = self.spec["modalities"]["rgb"]
        return {"rgb": (s["num_frames"], *s["image_size"], s["channels"])}

    def _make_embedding(self, index: int, view: Mapping) -> keras.layers.Layer:
        """The weights that embed view `index`'s input (applied with `embed_patches`)."""
        return tubelet_embedding(view["hidden_size"], view["patch_size"], name=f"embedding_view{index}")

    # ---------------------------------------------------------------------------------- structure
    def _make_encoders(self) -> None:
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
            self.global_linear = [keras.layers.Dense(g["hidden_size"], kernel_initializer=init("glorot_uniform"),
                                                     bias_initializer=init("zeros"),
                                                     name=f"global_encoder_linear_view{i}")
                                  for i in range(len(s["views"]))]

    @property
    def output_width(self) -> int:
        """The width of pre_logits (the global encoder's)."""
        g = self.spec["global_encoder"]
        if g["merge_axis"] == "time":
            return g["hidden_size"]
        return sum(v["hidden_size"] for v in self.spec["views"])

    def view_indices(self) -> dict[str, list[int]]:
        """Modality -> indices of its views (the `i` of `embedding_view{i}` and friends)."""
        return stream_views(self.spec)

    def _global_input_shape(self) -> tuple:
        s, geo = self.spec, self.geometry
        length = sum(geo["temporal"]) if s["global_encoder"]["merge_axis"] == "time" else geo["max_time"]
        if s["keep_spatiotemporal_features"]:
            grid = geo["views"][0]["grid"]
            return (None, grid[0] * grid[1], length, self.output_width)
        return (None, length + (1 if s["classifier"] == "token" else 0), self.output_width)

    def build(self, input_shape):
        s, geo = self.spec, self.geometry
        token_shapes = []
        for i, (v, g) in enumerate(zip(s["views"], geo["views"], strict=True)):
            self.embeddings[i].build(tuple(input_shape[v["modality"]]))
            if s["classifier"] == "token":
                setattr(self, f"cls_view{i}", self.add_weight(
                    name=f"cls_view{i}", shape=(1, g["temporal_tokens"], 1, v["hidden_size"]),
                    initializer=init("zeros")))
            token_shapes.append((None, geo["aligned_time"], g["frames_per_step"] * g["tokens_per_frame"],
                                 v["hidden_size"]))
        self.bottleneck = None
        fusion = s["cross_view_fusion"]
        if fusion and fusion["type"] == "bottleneck":
            self.bottleneck = self.add_weight(
                name="bottleneck", shape=(1, geo["aligned_time"], fusion["bottleneck_tokens"],
                                          self.encoder.bottleneck_width()),
                initializer=init(keras.initializers.RandomNormal(stddev=0.02)))
        self.encoder.build(token_shapes)
        for i, lin in enumerate(self.global_linear):
            lin.build((None, s["views"][i]["hidden_size"]))
        self.cls_global = None
        if s["classifier"] == "token":
            self.cls_global = self.add_weight(name="cls_global", shape=(1, 1, self.output_width),
                                              initializer=init("zeros"))
        self.global_encoder.build(self._global_input_shape())
        self.built = True

    # ---------------------------------------------------------------------------------- inputs
    def _describe_inputs(self) -> str:
        return ", ".join(f"'{m}': (B, {', '.join(map(str, shape))})" for m, shape in self.input_shapes.items())

    def check_inputs(self, inputs) -> dict:
        """The inputs as a dict, checked: keys are exactly `input_shapes`' and every shape fits."""
        expected = self.input_shapes
        if not isinstance(inputs, Mapping):
            if len(expected) != 1:
                raise ShapeError(f"this model takes a dict of inputs {{{self._describe_inputs()}}}; "
                                 f"got {type(inputs).__name__}")
            inputs = {next(iter(expected)): inputs}
        for key in inputs:
            if key not in MODALITIES:
                raise ShapeError(f"unknown modality {key!r} in the input dict; known modalities: "
                                 f"{', '.join(MODALITIES)}; this model takes {{{self._describe_inputs()}}}")
            if key not in expected:
                raise ShapeError(f"the input dict has {key!r}, but this model has no {key} stream; "
                                 f"it takes {{{self._describe_inputs()}}}")
        missing = [m for m in expected if m not in inputs]
        if missing:
            raise ShapeError(f"the input dict lacks modality {missing[0]!r}; this model takes "
                             f"{{{self._describe_inputs()}}}")
        batch = None
        for m, want in expected.items():
            shape = tuple(inputs[m].shape)
            if len(shape) != len(want) + 1:
                raise ShapeError(f"input '{m}' must be {len(want) + 1}-D (B, {', '.join(map(str, want))}); "
                                 f"got shape {shape}")
            for got, size, what in zip(shape[1:], want, _AXES[m], strict=True):
                if got is not None and got != size:
                    raise ShapeError(f"input '{m}' has {got} {what} but this model takes {size} "
                                     f"(expected (B, {', '.join(map(str, want))}), got {shape})")
            if shape[0] is not None:
                if batch is not None and shape[0] != batch:
                    raise ShapeError(f"inputs disagree on the batch size: '{m}' has {shape[0]}, an earlier one "
                                     f"{batch}")
                batch = shape[0]
        return {m: inputs[m] for m in expected}

    # ---------------------------------------------------------------------------------- forward
    def tokenize(self, inputs: Mapping) -> list:
        """Per view: patch embedding + per-frame CLS + temporal alignment -> (B, T_aligned, r_i*n_i, c_i)."""
        s, geo = self.spec, self.geometry
        tokens = []
        for i, (v, g) in enumerate(zip(s["views"], geo["views"], strict=True)):
            x = inputs[v["modality"]]
            batch = ops.shape(x)[0]
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

    def call(self, inputs, training=False):
        inputs = {m: ops.cast(x, self.compute_dtype) for m, x in self.check_inputs(inputs).items()}
        tokens = self.tokenize(inputs)
        bottleneck = None
        if self.bottleneck is not None:
            b = self.bottleneck
            batch = ops.shape(tokens[0])[0]
            bottleneck = ops.broadcast_to(ops.cast(b, tokens[0].dtype), (batch,) + tuple(b.shape[1:]))
        tokens = self.encoder(tokens, bottleneck=bottleneck, training=training)
        return self.global_encode(tokens, training=training)

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
        return table

    def get_config(self):
        return {"name": self.name, "spec": to_plain(self.spec)}  # a plain copy (deepcopy of a tracked dict is slow)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
