"""Input embeddings of MTV views and M&M streams: tubelets for video (RGB, flow), 2-D patches for spectrograms.

Scenic embeds with a VALID convolution whose kernel equals its stride. That is a patchify: cut the
input into non-overlapping blocks and multiply each flattened block by the flattened kernel. We
compute it that way (`embed_patches`): one large matmul, fast forward *and* backward everywhere,
whereas TensorFlow's `Conv3DBackpropFilter` without oneDNN (the default on CPUs without AVX-512
VNNI/BF16) takes seconds for what the matmul's gradient does in milliseconds.

The weights still live in `keras.layers.Conv3D`/`Conv2D` objects: the kernel keeps Flax's layout
`(t, h, w, C, hidden)` / `(t, f, C, hidden)`, and the weight files written by earlier releases
(whose paths Keras derives from the layer class) load unchanged. Those layers are never called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from mtv.layers.common import init


def tubelet_embedding(hidden_size: int, patch_size: Sequence[int], name: str) -> keras.layers.Conv3D:
    """The weights of MTV's `embedding_view{i}`; `patch_size` is Scenic's (h, w, t).

    Applied with `embed_patches`: (B, T, H, W, C) -> (B, T/t, H/h, W/w, hidden); the kernel is
    (t, h, w, C, hidden) as in Flax.
    """
    ph, pw, pt = (int(p) for p in patch_size)
    return keras.layers.Conv3D(hidden_size, kernel_size=(pt, ph, pw), strides=(pt, ph, pw), padding="valid",
                               kernel_initializer=init("glorot_uniform"), bias_initializer=init("zeros"), name=name)


def spectrogram_embedding(hidden_size: int, patch_size: Sequence[int], name: str) -> keras.layers.Conv2D:
    """The weights of a log-mel spectrogram's patch embedding; `patch_size` is (time, frequency).

    Applied with `embed_patches`: (B, time_frames, mel_bins, C) -> (B, time_frames/t, mel_bins/f,
    hidden); the kernel is (t, f, C, hidden), Flax's 2-D Conv layout.
    """
    pt, pf = (int(p) for p in patch_size)
    return keras.layers.Conv2D(hidden_size, kernel_size=(pt, pf), strides=(pt, pf), padding="valid",
                               kernel_initializer=init("glorot_uniform"), bias_initializer=init("zeros"), name=name)


def embed_patches(layer: keras.layers.Layer, x):
    """`layer(x)` for a kernel == stride VALID conv, computed as patchify + one matmul + bias.

    x: (B, *sizes, C) with every size divisible by the kernel's; returns (B, *sizes/kernel, hidden).
    """
    with keras.name_scope(layer.name):
        kernel = ops.cast(layer.kernel, x.dtype)
        patch = tuple(int(p) for p in kernel.shape[:-2])
        channels, hidden = int(kernel.shape[-2]), int(kernel.shape[-1])
        sizes = tuple(int(s) for s in x.shape[1:-1])
        grid = tuple(s // p for s, p in zip(sizes, patch, strict=True))
        n = len(patch)
        # (B, g0, p0, g1, p1, ..., C) -> (B, g0, g1, ..., p0, p1, ..., C): each row is one block in the
        # kernel's (p0, p1, ..., C) order.
        split = [-1]
        for g, p in zip(grid, patch, strict=True):
            split += [g, p]
        y = ops.reshape(x, (*split, channels))
        order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
        y = ops.transpose(y, order)
        y = ops.reshape(y, (-1, math.prod(patch) * channels))
        y = ops.matmul(y, ops.reshape(kernel, (-1, hidden)))
        y = ops.add(y, ops.cast(layer.bias, x.dtype))
        return ops.reshape(y, (-1, *grid, hidden))
