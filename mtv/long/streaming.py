"""Streaming recognition with a fixed-size memory: clip by clip, backbone tokens -> K-means memory -> a prediction.

`StreamingClassifier` wraps any MTV or M&M backbone. For each clip it takes the global encoder's tokens
(`mtv.long.features.global_sequence`, N per clip), folds them into a memory of K tokens with
`mtv.long.memory.KMeansMemory`, and a `MemoryReadout` head reads the memory and emits logits. The memory
is explicit state: `step(memory, weights, clip) -> (memory, weights, logits)`, starting from
`empty_state(batch)` (zeros), so a stream of any length costs K x D floats of state. `export_streaming`
writes a SavedModel whose `step` signature takes and returns that state.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path

import keras
from keras import ops

from mtv.errors import ConfigError, ExportError, ShapeError
from mtv.layers.common import LN_EPSILON
from mtv.long.features import global_sequence
from mtv.long.memory import KMeansMemory
from mtv.utils.fileio import atomic_dir, writing

STEP_SIGNATURE = "step"


@keras.saving.register_keras_serializable(package="mtv")
class MemoryReadout(keras.layers.Layer):
    """Attention pooling of the memory by one learned query, then LayerNorm + Dense -> logits [B, num_classes].

    A slot's attention logit gets + log(weight): a centre that absorbed w tokens counts as w identical
    tokens would, and empty slots (weight 0) get no attention.
    """

    def __init__(self, num_classes: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.width = int(num_classes), int(width)
        self.key = keras.layers.Dense(self.width, name="key")
        self.norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="norm")
        self.output_projection = keras.layers.Dense(self.num_classes, name="output_projection")

    def build(self, memory_shape=None, weights_shape=None):
        self.key.build((None, None, self.width))
        # Zero query: attention proportional to the weights, i.e. the mean of every token seen, until trained.
        self.query = self.add_weight(name="query", shape=(self.width,), initializer="zeros")
        self.norm.build((None, self.width))
        self.output_projection.build((None, self.width))
        self.built = True

    def call(self, memory, weights):
        width = memory.shape[-1]
        scores = ops.einsum("bkd,d->bk", self.key(memory), ops.cast(self.query, memory.dtype)) / math.sqrt(width)
        scores = scores + ops.log(ops.maximum(ops.cast(weights, memory.dtype), 1e-30))
        attention = ops.softmax(scores, axis=-1)
        return self.output_projection(self.norm(ops.einsum("bk,bkd->bd", attention, memory)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "width": self.width}


def _clip_axis_inputs(stream, index: int):
    """Clip `index` of a stream: [B, S, ...] -> [B, ...] (a dict of them for M&M)."""
    if isinstance(stream, Mapping):
        return {k: v[:, index] for k, v in stream.items()}
    return stream[:, index]


@keras.saving.register_keras_serializable(package="mtv")
class StreamingClassifier(keras.Model):
    """Backbone tokens per clip -> K-token K-means memory -> `MemoryReadout` logits after every clip.

    `call(stream)` takes clips [B, S, *clip] (a dict of them for M&M) and returns logits [B, S, C], the
    prediction after each clip; `step` is the same for one clip with the memory as explicit state.
    """

    def __init__(self, backbone, num_classes: int, memory_size: int = 16, num_iterations: int = 2, **kwargs):
        kwargs.setdefault("name", "streaming_mtv")
        super().__init__(**kwargs)
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ConfigError(f"memory_size must be a positive integer (the K of the K-token memory), got "
                              f"{memory_size!r}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.memory_size = memory_size
        self.memory = KMeansMemory(num_iterations, name="memory")
        self.readout = MemoryReadout(self.num_classes, self.token_width, name="readout")
        self.readout.build()
        self.built = True

    @property
    def token_width(self) -> int:
        """D, the width of the backbone's tokens and of the memory."""
        return int(self.backbone.output_width)

    @property
    def input_shapes(self) -> dict[str, tuple]:
        """One clip's inputs without the batch axis (the backbone's)."""
        return self.backbone.input_shapes

    def empty_state(self, batch_size: int):
        """The state before the first clip: memory zeros [B, K, D] and weights zeros [B, K] (an empty memory)."""
        return (ops.zeros((batch_size, self.memory_size, self.token_width)),
                ops.zeros((batch_size, self.memory_size)))

    def clip_tokens(self, clip, training: bool = False):
        """The N tokens of each clip in the batch: [B, N, D]."""
        return global_sequence(self.backbone, clip, training=training)

    def update(self, memory, weights, tokens):
        """Folds tokens [B, N, D] into the state; returns (memory, weights, logits)."""
        memory, weights = self.memory(memory, weights, tokens)
        return memory, weights, ops.cast(self.readout(memory, weights), "float32")

    def step(self, memory, weights, clip, training: bool = False):
        """One clip [B, *clip]: (memory, weights, logits [B, C]) after it."""
        return self.update(memory, weights, self.clip_tokens(clip, training=training))

    def check_stream(self, stream) -> None:
        """ShapeError unless every input of `stream` is [B, S, *clip] with this backbone's clip shape, S static."""
        shapes = self.input_shapes
        inputs = dict(stream) if isinstance(stream, Mapping) else {"frames": stream}
        if not isinstance(stream, Mapping) and len(shapes) == 1:
            shapes = {"frames": next(iter(shapes.values()))}
        for name, want in shapes.items():
            if name not in inputs:
                raise ShapeError(f"the stream lacks input '{name}'; this model takes {sorted(shapes)}")
            got = tuple(inputs[name].shape)
            if len(got) != len(want) + 2 or got[1] is None or any(
                    g is not None and g != w for g, w in zip(got[2:], want, strict=True)):  # None: known at run time
                raise ShapeError(f"stream input '{name}' must be [B, S, {', '.join(map(str, want))}] (S clips of this "
                                 f"backbone's shape, S static); got shape {got}")

    def call(self, stream, training: bool = False):
        self.check_stream(stream)
        first = next(iter(stream.values())) if isinstance(stream, Mapping) else stream
        batch, clips = ops.shape(first)[0], int(first.shape[1])

        def merge(x):  # [B, S, ...] -> [B*S, ...]: one backbone pass for every clip
            return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

        merged = {k: merge(v) for k, v in stream.items()} if isinstance(stream, Mapping) else merge(stream)
        tokens = self.clip_tokens(merged, training=training)
        tokens = ops.reshape(tokens, (batch, clips) + tuple(tokens.shape[1:]))
        memory = ops.zeros((batch, self.memory_size, self.token_width), tokens.dtype)
        weights = ops.zeros((batch, self.memory_size), tokens.dtype)
        logits = []
        for s in range(clips):  # S is static: the stream length of this batch, not data
            memory, weights, out = self.update(memory, weights, tokens[:, s])
            logits.append(out)
        return ops.stack(logits, axis=1)

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "memory_size": self.memory_size,
                "num_iterations": self.memory.num_iterations}

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(dict(config))
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)


def export_streaming(model: StreamingClassifier, path: str | os.PathLike) -> Path:
    """Writes a SavedModel with one signature, `step`: the memory is explicit state in and out.

    Inputs: `memory` float32 [B, K, D], `memory_weights` float32 [B, K] (zeros for the first clip) and the
    clip (`frames` for an RGB model, else one input per modality, named as `model.input_shapes`). Outputs:
    `memory`, `memory_weights`, `logits` [B, C], `probabilities` (softmax). Written atomically.
    """
    import tensorflow as tf

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ExportError(f"export path '{path}' exists and is not an empty directory; choose a new one")
    shapes = model.input_shapes
    names = ["frames"] if list(shapes) == ["rgb"] else list(shapes)
    k, d = model.memory_size, model.token_width
    specs = [tf.TensorSpec((None, k, d), tf.float32, name="memory"),
             tf.TensorSpec((None, k), tf.float32, name="memory_weights")]
    specs += [tf.TensorSpec((None, *shape), tf.float32, name=name) for name, shape in zip(names, shapes.values(),
                                                                                          strict=True)]

    def step(memory, memory_weights, *clip):
        inputs = clip[0] if names == ["frames"] else dict(zip(shapes, clip, strict=True))
        memory, memory_weights, logits = model.step(memory, memory_weights, inputs, training=False)
        return {"memory": memory, "memory_weights": memory_weights, "logits": logits,
                "probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(STEP_SIGNATURE, tf.function(step, input_signature=specs, autograph=False))
    with writing(path), atomic_dir(path) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return path
