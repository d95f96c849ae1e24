"""The MTV classifier: a backbone (MTV or M&M) plus Scenic's single Dense `output_projection`."""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import ops

from mtv.errors import ShapeError
from mtv.layers.common import flax_dense, init, prefixed
from mtv.models.mm_backbone import MMBackbone
from mtv.models.mtv_backbone import MTVBackbone, pool_tokens
from mtv.models.spec import HEAD_FIELDS, head_fields, to_plain


def backbone_class(spec: Mapping) -> type[MTVBackbone]:
    """MTVBackbone for an RGB-only spec, MMBackbone for any other (one spec, one model)."""
    return MTVBackbone if list(spec["modalities"]) == ["rgb"] else MMBackbone


@keras.saving.register_keras_serializable(package="mtv")
class MTVClassifier(keras.Model):
    """Backbone -> one Dense `output_projection` (zero-initialised, as Scenic) -> logits.

    Input: what the backbone takes (`input_shapes`). Output: logits (batch, num_classes), a dict of
    logits per head when `class_splits` is set (the Dense output sliced in `split_names` order), or
    the backbone's pre_logits when `final_endpoint == 'pre_logits'` (then there is no head).
    """

    def __init__(self, backbone: MTVBackbone, num_classes: int, class_splits=None, split_names=None,
                 final_endpoint: str = "logits", **kwargs):
        kwargs.setdefault("name", "mtv")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head_config = head_fields(num_classes, class_splits, split_names, final_endpoint)
        self.output_projection = None
        if final_endpoint == "logits":
            self.output_projection = keras.layers.Dense(num_classes, kernel_initializer=init("zeros"),
                                                        bias_initializer=init("zeros"), name="output_projection")
            self.output_projection.build((None, backbone.output_width))
        self.built = True

    @classmethod
    def from_preset(cls, handle: str, **kwargs) -> MTVClassifier:
        """A pretrained classifier from a preset (`mtv.models.mtv_presets.preset_names()`) or any `mtv.load` handle."""
        from mtv.io.loading import load

        return load(handle, **kwargs)

    @classmethod
    def from_spec(cls, spec: Mapping, **kwargs) -> MTVClassifier:
        """A randomly initialised classifier of `spec` (see `mtv.models.spec`)."""
        backbone = backbone_class(spec)(spec)
        return cls(backbone, **{k: spec[k] for k in HEAD_FIELDS}, **kwargs)

    # ------------------------------------------------------------------------------ description
    @property
    def spec(self) -> dict:
        """The whole model's spec: the backbone's plus the head fields."""
        # to_plain, not deepcopy: Keras tracks these dicts, and deep-copying a tracked dict pickles the whole model.
        return {**to_plain(self.backbone.spec), **to_plain(self.head_config)}

    @property
    def geometry(self) -> dict:
        """The backbone's token geometry (`mtv.models.spec.derive`)."""
        return self.backbone.geometry

    @property
    def input_shapes(self) -> dict[str, tuple]:
        """Input name -> shape without the batch axis, e.g. {'rgb': (32, 224, 224, 3)}."""
        return self.backbone.input_shapes

    @property
    def modalities(self) -> list[str]:
        """The backbone's input streams, in the order rgb, flow, audio."""
        return list(self.backbone.modalities)

    def view_indices(self) -> dict[str, list[int]]:
        """Modality -> indices of its views (the `i` of `embedding_view{i}` and friends)."""
        return self.backbone.view_indices()

    @property
    def input_frames_shape(self) -> tuple:
        """Deprecated (use `input_shapes['rgb']`): the RGB input's (num_frames, height, width, channels)."""
        if "rgb" not in self.input_shapes:
            raise ShapeError(f"this model has no RGB input; its inputs are {self.input_shapes}")
        return self.input_shapes["rgb"]

    # ---------------------------------------------------------------------------------- forward
    def pre_logits(self, inputs, training=False):
        """The pooled global feature fed to `output_projection` (Scenic's `pre_logits`)."""
        return self.backbone(inputs, training=training)

    def call(self, inputs, training=False):
        features = self.backbone(inputs, training=training)
        if self.output_projection is None:
            return features
        if self.backbone.spec["keep_spatiotemporal_features"]:
            features = pool_tokens(features, self.backbone.spec["classifier"], axis=(1, 2, 3))
        logits = ops.cast(self.output_projection(features), "float32")
        splits = self.head_config["class_splits"]
        if not splits:
            return logits
        out, start = {}, 0
        for name, size in zip(self.head_config["split_names"], splits, strict=True):
            out[name] = logits[:, start:start + size]
            start += size
        return out

    # ------------------------------------------------------------------------- weights & config
    def flax_params(self) -> dict:
        """Every weight under its Scenic/Flax path ('/'-joined, no leading 'params/')."""
        table = self.backbone.flax_params()
        if self.output_projection is not None:
            table.update(prefixed("output_projection", flax_dense(self.output_projection)))
        return table

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone),
                **to_plain(self.head_config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)
