"""Per-clip token sequences of an MTV / M&M backbone: what the global encoder outputs before its final pooling.

The backbone's `call` returns only the pooled feature (or, with `keep_spatiotemporal_features`, the
(t, h, w) map). Long-video heads need the tokens themselves: the streaming memory clusters them and the
localizer reads one feature per time step. `global_sequence` runs the backbone's own pieces (`check_inputs`,
`tokenize`, `encoder`, the view merge of `global_encode`) and stops before the pool; a test checks that
pooling its output gives exactly `backbone(x)`, so a change in the backbone cannot slip by. (The backbone
could expose this as a method; then this module shrinks to a call.)
"""

from __future__ import annotations

from keras import ops

from mtv.errors import ConfigError
from mtv.models.mtv_backbone import pool_tokens


def _merged_views(backbone, xs):
    """`global_encode`'s per-view pooling, projection/tiling and merge: (B, L, width) before the global encoder."""
    s, geo = backbone.spec, backbone.geometry
    batch = ops.shape(xs[0])[0]
    feats = []
    for i, (x, g) in enumerate(zip(xs, geo["views"], strict=True)):
        x = ops.reshape(x, (batch, g["temporal_tokens"], g["tokens_per_frame"], x.shape[-1]))
        x = pool_tokens(x, s["classifier"], axis=2)
        if backbone.global_linear:
            x = backbone.global_linear[i](x)
        elif g["temporal_tokens"] != geo["max_time"]:
            # Scenic tiles the whole sequence ([c0, c1, c0, c1]), as the backbone does.
            x = ops.tile(x, (1, geo["max_time"] // g["temporal_tokens"], 1))
        feats.append(x)
    return ops.concatenate(feats, axis=1 if backbone.global_linear else -1)


def global_sequence(backbone, inputs, training: bool = False):
    """The global encoder's output tokens of one clip batch: (B, L, width).

    L is the temporal length (plus 1 leading CLS token for `classifier='token'`); with
    `keep_spatiotemporal_features` it is t * h * w (the feature map, flattened).
    """
    s = backbone.spec
    if s["keep_spatiotemporal_features"]:
        x = backbone(inputs, training=training)  # (B, t, h, w, width)
        return ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))
    inputs = {m: ops.cast(x, backbone.compute_dtype) for m, x in backbone.check_inputs(inputs).items()}
    tokens = backbone.tokenize(inputs)
    bottleneck = None
    if backbone.bottleneck is not None:
        b = backbone.bottleneck
        bottleneck = ops.broadcast_to(ops.cast(b, tokens[0].dtype), (ops.shape(tokens[0])[0],) + tuple(b.shape[1:]))
    tokens = backbone.encoder(tokens, bottleneck=bottleneck, training=training)
    x = _merged_views(backbone, tokens)
    if backbone.cls_global is not None:
        cls = ops.broadcast_to(ops.cast(backbone.cls_global, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        x = ops.concatenate([cls, x], axis=1)
    return backbone.global_encoder(x, training=training)


def pooled(backbone, sequence):
    """The backbone's pooled output from a `global_sequence` (what `backbone(x)` returns without the map option)."""
    return pool_tokens(sequence, backbone.spec["classifier"], axis=1)


def steps_per_clip(backbone) -> int:
    """How many time steps `step_features` gives per clip (the finest view's temporal tokens)."""
    if backbone.spec["global_encoder"]["merge_axis"] == "time":
        raise ConfigError("per-step features need model.global_encoder_config.merge_axis 'channel': with 'time' the "
                          "global encoder's tokens are the views one after another, not one token per time step")
    return int(backbone.geometry["max_time"])


def step_features(backbone, inputs, training: bool = False):
    """One feature per time step of each clip: (B, steps_per_clip, width), step i covering frames [i T/S, (i+1) T/S)."""
    steps = steps_per_clip(backbone)
    x = global_sequence(backbone, inputs, training=training)
    if backbone.spec["keep_spatiotemporal_features"]:
        return ops.mean(ops.reshape(x, (ops.shape(x)[0], steps, -1, x.shape[-1])), axis=2)
    return x[:, 1:] if backbone.cls_global is not None else x
