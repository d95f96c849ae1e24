"""Input embeddings of the M&M streams: tubelets for video (RGB, flow), 2-D patches for spectrograms."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def tubelet_embedding(hidden_size: int, patch_size: Sequence[int], name: str) -> keras.layers.Conv3D:
    """Non-overlapping 3-D conv, exactly as MTV's `embedding_view{i}`; `patch_size` is Scenic's (h, w, t).

    Input (B, T, H, W, C) -> (B, T/t, H/h, W/w, hidden); the kernel is (t, h, w, C, hidden) as in Flax.
    """
    ph, pw, pt = (int(p) for p in patch_size)
    return keras.layers.Conv3D(hidden_size, kernel_size=(pt, ph, pw), strides=(pt, ph, pw), padding="valid",
                               name=name)


def spectrogram_embedding(hidden_size: int, patch_size: Sequence[int], name: str) -> keras.layers.Conv2D:
    """Non-overlapping 2-D conv over a log-mel spectrogram; `patch_size` is (time, frequency).

    Input (B, time_frames, mel_bins, C) -> (B, time_frames/t, mel_bins/f, hidden); the kernel is
    (t, f, C, hidden), Flax's 2-D Conv layout.
    """
    pt, pf = (int(p) for p in patch_size)
    return keras.layers.Conv2D(hidden_size, kernel_size=(pt, pf), strides=(pt, pf), padding="valid", name=name)
