"""M&M: the MTV backbone over several modalities. Each modality is a stream of MTV views; all views of all
streams go through one MultiviewEncoder (cross-view attention or bottleneck tokens between neighbouring
views, also across streams) and one global encoder. Only the inputs and the audio embedding differ
from MTV; with RGB alone it is MTV (same Flax names, shapes and logits). See docs/multimodal.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from mtv.layers.patch_embedding import spectrogram_embedding, tubelet_embedding
from mtv.models.mtv_backbone import MTVBackbone
from mtv.models.spec import MODALITIES


@keras.saving.register_keras_serializable(package="mtv")
class MMBackbone(MTVBackbone):
    """Multimodal Multiview Transformer (M&M) backbone.

    Input: a dict with one entry per configured modality: 'rgb' (B, T, H, W, 3) and 'flow'
    (B, T, H, W, 2) in [-1, 1], 'audio' (B, time_frames, mel_bins, 1) log-mel (`input_shapes`).
    A bare tensor is accepted when the model has a single modality. Output: as MTVBackbone.
    """

    SUPPORTED_MODALITIES = MODALITIES

    def __init__(self, spec: dict, **kwargs):
        kwargs.setdefault("name", "mm_backbone")
        super().__init__(spec, **kwargs)

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

    def _make_embedding(self, index: int, view: Mapping) -> keras.layers.Layer:
        """Audio views embed 2-D spectrogram patches; video views (rgb, flow) tubelets."""
        make = spectrogram_embedding if view["modality"] == "audio" else tubelet_embedding
        return make(view["hidden_size"], view["patch_size"], name=f"embedding_view{index}")
