"""M&M: MTV over several modalities. Each modality is a stream of MTV views; all views of all streams
go through one MultiviewEncoder (cross-view attention or bottleneck tokens between neighbouring
views, also across streams) and one global encoder, then MTV's single-Dense head(s).

With RGB alone it is MTV: same Flax names, shapes and logits. See docs/multimodal.md.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from mtv.errors import ShapeError
from mtv.layers.patch_embedding import embed_patches, spectrogram_embedding, tubelet_embedding
from mtv.models.mtv import MTV, pool_tokens
from mtv.models.multimodal_spec import (
    MODALITIES,
    derive_multimodal,
    multimodal_spec_from_config,
    stream_views,
)

_VIDEO_AXES = ("frames", "height", "width", "channels")
_AUDIO_AXES = ("time frames", "mel bins", "channels")


@keras.saving.register_keras_serializable(package="mtv")
class MultimodalMTV(keras.Model):
    """Multimodal Multiview Transformer (M&M).

    Input: a dict with one entry per configured modality: 'rgb' (B, T, H, W, 3) and 'flow'
    (B, T, H, W, 2) in [-1, 1], 'audio' (B, time_frames, mel_bins, 1) log-mel. A bare array is
    accepted when the model has a single modality. Output: as MTV (logits, a dict per head when
    `split_names` is set, or pre_logits).
    """

    # MTV's own merge, global-encoder shapes and Flax name table: they read only the attributes
    # both classes share, so an RGB-only M&M runs MTV's code and matches it by construction.
    global_width = MTV.global_width
    _global_input_shape = MTV._global_input_shape
    global_encode = MTV.global_encode
    flax_params = MTV.flax_params
    build = MTV.build
    _make_encoders_and_head = MTV._make_encoders_and_head

    def __init__(self, spec: dict, **kwargs):
        kwargs.setdefault("name", "multimodal_mtv")
        super().__init__(**kwargs)
        self.spec = copy.deepcopy(spec)
        self.geometry = derive_multimodal(self.spec)
        s = self.spec
        self.modalities = [m for m in MODALITIES if m in s["modalities"]]
        self.embeddings = [
            (spectrogram_embedding if v["modality"] == "audio" else tubelet_embedding)(
                v["hidden_size"], v["patch_size"], name=f"embedding_view{i}")
            for i, v in enumerate(s["views"])]
        self._make_encoders_and_head()
        self.build({m: (None, *shape) for m, shape in self.input_shapes.items()})

    # ----------------------------------------------------------------------------------- shapes
    @property
    def input_shapes(self) -> dict[str, tuple]:
        """Per modality, the input shape without the batch axis."""
        out = {}
        for m in self.modalities:
            s = self.spec["modalities"][m]
            if m == "audio":
                out[m] = (s["num_frames"], s["mel_bins"], s["channels"])
            else:
                out[m] = (s["num_frames"], *s["image_size"], s["channels"])
        return out

    def view_indices(self) -> dict[str, list[int]]:
        """Modality -> indices of its views (the `i` of `embedding_view{i}` and friends)."""
        return stream_views(self.spec)

    def _view_input_shape(self, view: int, input_shape) -> tuple:
        """Each view embeds its own modality's input."""
        return tuple(input_shape[self.spec["views"][view]["modality"]])

    def _check_inputs(self, inputs) -> dict:
        """The input dict, checked: keys are exactly the configured modalities, shapes fit them."""
        expected = self.input_shapes
        wanted = ", ".join(f"'{m}': (B, {', '.join(map(str, shape))})" for m, shape in expected.items())
        if not isinstance(inputs, Mapping):
            if len(self.modalities) == 1:
                inputs = {self.modalities[0]: inputs}
            else:
                raise ShapeError(f"this M&M model takes a dict of inputs {{{wanted}}}; got {type(inputs).__name__}")
        for key in inputs:
            if key not in MODALITIES:
                raise ShapeError(f"unknown modality {key!r} in the input dict; known modalities: "
                                 f"{', '.join(MODALITIES)}; this model takes {{{wanted}}}")
            if key not in expected:
                raise ShapeError(f"the input dict has {key!r}, but this model has no {key} stream; "
                                 f"it takes {{{wanted}}}")
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ShapeError(f"the input dict lacks modality {missing[0]!r}; this model takes {{{wanted}}}")
        batch = None
        for m in self.modalities:
            shape, want = tuple(inputs[m].shape), expected[m]
            axes = _AUDIO_AXES if m == "audio" else _VIDEO_AXES
            if len(shape) != len(want) + 1:
                raise ShapeError(f"input '{m}' must be {len(want) + 1}-D (B, {', '.join(map(str, want))}); "
                                 f"got shape {shape}")
            for got, size, what in zip(shape[1:], want, axes, strict=True):
                if got is not None and got != size:
                    raise ShapeError(f"input '{m}' has {got} {what} but this model takes {size} "
                                     f"(expected (B, {', '.join(map(str, want))}), got {shape})")
            if shape[0] is not None:
                if batch is not None and shape[0] != batch:
                    raise ShapeError(f"inputs disagree on the batch size: '{m}' has {shape[0]}, an earlier one "
                                     f"{batch}")
                batch = shape[0]
        return inputs

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

    def call(self, inputs, training=False):
        return self.forward(inputs, training=training, endpoint=self.spec["final_endpoint"])

    def pre_logits(self, inputs, training=False):
        """The pooled global feature fed to `output_projection`."""
        return self.forward(inputs, training=training, endpoint="pre_logits")

    def forward(self, inputs, training=False, endpoint: str = "logits"):
        """The whole model up to `endpoint` ('logits' or 'pre_logits')."""
        inputs = self._check_inputs(inputs)
        inputs = {m: ops.cast(inputs[m], self.compute_dtype) for m in self.modalities}
        s = self.spec
        tokens = self.tokenize(inputs)
        bottleneck = None
        if self.bottleneck is not None:
            b = self.bottleneck
            batch = ops.shape(tokens[0])[0]
            bottleneck = ops.broadcast_to(ops.cast(b, tokens[0].dtype), (batch,) + tuple(b.shape[1:]))
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

    # ------------------------------------------------------------------------------------ config
    def get_config(self):
        return {"name": self.name, "spec": copy.deepcopy(self.spec)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_multimodal_model(config: Any, *, num_classes: int | None = None, class_splits=None, split_names=None,
                           input_shapes: Mapping | None = None, seed: int | None = None) -> MultimodalMTV:
    """A randomly initialised M&M from a Scenic-style config (ConfigDict, dict, .json, .py path or name)."""
    spec = multimodal_spec_from_config(config, num_classes=num_classes, class_splits=class_splits,
                                       split_names=split_names, input_shapes=input_shapes)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return MultimodalMTV(spec)
