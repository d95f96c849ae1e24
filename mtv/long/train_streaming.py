"""Training the streaming classifier's head on streams of camera-motion clips, and saving / loading the head.

Only the `MemoryReadout` head learns; the backbone is frozen and the memory update (`KMeansMemory`) has no
weights. So the memory after every clip of every training stream is a fixed function of the backbone's tokens:
`clip_tokens` runs the backbone once per clip, `memory_states` folds the tokens into the memory clip by clip,
and `train_streaming_head` fits the head on those states alone (seconds on a CPU, no backbone pass per step).

Loss: cross-entropy of the head's prediction after *every* clip of a stream against the stream's label
(`loss_on='every'`, the default), because the classifier is read after every clip, from the first one on;
`loss_on='last'` uses only the state after the stream's last clip.

Streams (`render_streams`): S consecutive clips of one source video (the scene runs on) filmed with one
camera motion at one speed factor, each clip with a fresh window placement (`mtv.data.synthetic.render_clip`;
a zoom cannot go on for long) and one brightness/contrast change per stream. `stream_set(split='heldout')`
renders from the held-out video only (`mtv.data.synthetic.HELDOUT_VIDEO`), 'train' from the others.

A trained head is saved as a directory (`save_streaming_head`): `streaming_head.json` (format, K, iterations,
classes, token width, the backbone's handle and weight fingerprint, how it was trained) and `readout.npz` (the
head's weights by name). `load_streaming_head(dir, backbone)` rebuilds the `StreamingClassifier` and refuses a
backbone whose weights differ from the one the head was trained on (a head is only valid on its tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from mtv.data.synthetic import CLASSES, render_clip, video_sources
from mtv.errors import CheckpointError, ConfigError, DataError, ExportError, ShapeError
from mtv.long.streaming import MemoryReadout, StreamingClassifier
from mtv.utils.fileio import atomic_dir, writing

HEAD_FORMAT = "mtv-streaming-head"
HEAD_VERSION = 1
HEAD_JSON = "streaming_head.json"
HEAD_WEIGHTS = "readout.npz"
LOSS_ON = ("every", "last")


# ------------------------------------------------------------------------------------------ streams
def render_streams(sources: Sequence[np.ndarray], *, count: int, clips_per_stream: int, num_frames: int, size: int,
                   seed: int | Sequence[int], labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`count` streams of one camera motion each: (uint8 [count, S, T, size, size, 3], int64 labels [count]).

    Labels are balanced over the classes (cycled, then shuffled) unless given.
    """
    if not sources:
        raise DataError("render_streams needs at least one source (video frames)")
    if count < 1 or clips_per_stream < 1:
        raise DataError(f"need count >= 1 streams of clips_per_stream >= 1 clips; got {count} and {clips_per_stream}")
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.permutation(np.arange(count) % len(CLASSES))
    labels = np.asarray(labels, np.int64)
    if labels.shape != (count,) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"labels must be {count} class indices in [0, {len(CLASSES)}); got shape {labels.shape}")
    out = np.empty((count, clips_per_stream, num_frames, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        source = sources[int(rng.integers(len(sources)))]
        factor = float(rng.uniform(0.8, 1.25))
        position = int(rng.integers(len(source)))
        for s in range(clips_per_stream):
            out[i, s] = render_clip(source, int(label), num_frames=num_frames, size=size, rng=rng,
                                    start=position + s * num_frames, speed_factor=factor, photometric=False)
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        out[i] = np.clip((out[i].astype(np.float32) - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8)
    return out, labels


def stream_set(videos: str | os.PathLike | Sequence, *, split: str, count: int, clips_per_stream: int,
               num_frames: int, size: int, seed: int | Sequence[int] = 0,
               source_min_resize: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """`render_streams` from the real videos of one split ('train' or 'heldout', as `video_sources`)."""
    sources = video_sources(videos, split=split, min_resize=source_min_resize)
    return render_streams(sources, count=count, clips_per_stream=clips_per_stream, num_frames=num_frames,
                          size=size, seed=seed)


# -------------------------------------------------------------------------------- precomputation
def check_streams(model: StreamingClassifier, streams) -> None:
    """ShapeError unless `streams` is [M, S, *clip] with the model's clip shape (RGB models)."""
    shapes = model.input_shapes
    if list(shapes) != ["rgb"]:
        raise ShapeError(f"stream training takes RGB streams; this backbone takes {sorted(shapes)}")
    want = tuple(shapes["rgb"])
    got = tuple(np.shape(streams))
    if len(got) != len(want) + 2 or got[2:] != want:
        raise ShapeError(f"streams must be [M, S, {', '.join(map(str, want))}] (clips of this backbone); "
                         f"got shape {got}")
    if got[0] == 0 or got[1] == 0:
        raise DataError(f"streams {got} hold no clip: need M >= 1 streams of S >= 1 clips")


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clip_tokens(model: StreamingClassifier, streams: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The backbone's tokens of every clip: float32 [M, S, N, D] from streams [M, S, *clip] (uint8 or [-1, 1])."""
    import tensorflow as tf

    from mtv.data.sources import normalize_frames

    check_streams(model, streams)
    count, clips = streams.shape[:2]
    flat = streams.reshape((count * clips,) + streams.shape[2:])
    # One compiled function per model, fed full batches only (the last one padded): traced once, not per call.
    encode = _ENCODERS.get(model)
    if encode is None:
        owner = weakref.ref(model)  # a strong reference in the value would keep the key alive forever
        encode = _ENCODERS[model] = tf.function(lambda x: owner().clip_tokens(x))
    parts = []
    for i in range(0, len(flat), batch_size):
        batch = normalize_frames(flat[i:i + batch_size])
        pad = batch_size - len(batch)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        parts.append(np.asarray(encode(tf.constant(batch)))[:batch_size - pad])
    tokens = np.concatenate(parts)
    return tokens.reshape((count, clips) + tokens.shape[1:]).astype(np.float32)


def memory_states(model: StreamingClassifier, tokens: np.ndarray, *,
                  batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The memory after each clip: (memory [M, S, K, D], weights [M, S, K]) from tokens [M, S, N, D]."""
    import tensorflow as tf

    tokens = np.asarray(tokens, np.float32)
    if tokens.ndim != 4 or tokens.shape[-1] != model.token_width:
        raise ShapeError(f"tokens must be [M, S, N, {model.token_width}] (this model's token width); got "
                         f"{tokens.shape}")

    @tf.function(reduce_retracing=True)
    def fold(x):
        memory, weights = model.empty_state(tf.shape(x)[0])
        memories, all_weights = [], []
        for s in range(x.shape[1]):  # S is static: one traced update per clip
            memory, weights = model.memory(memory, weights, x[:, s])
            memories.append(memory)
            all_weights.append(weights)
        return tf.stack(memories, axis=1), tf.stack(all_weights, axis=1)

    parts = [fold(tf.constant(tokens[i:i + batch_size])) for i in range(0, len(tokens), batch_size)]
    return (np.concatenate([np.asarray(m) for m, _ in parts]),
            np.concatenate([np.asarray(w) for _, w in parts]))


def readout_logits(model: StreamingClassifier, memory: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The head's logits [M, S, C] for memory states [M, S, K, D] / weights [M, S, K]."""
    lead = memory.shape[:2]
    flat_m = memory.reshape((-1,) + memory.shape[2:])
    flat_w = weights.reshape((-1,) + weights.shape[2:])
    logits = np.asarray(model.readout(flat_m, flat_w))
    return logits.reshape(lead + logits.shape[-1:])


def accuracy_per_clip(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Top-1 after clip s, for every s: logits [M, S, C] vs stream labels [M]."""
    return [float(v) for v in (np.argmax(logits, -1) == np.asarray(labels)[:, None]).mean(0)]


# ------------------------------------------------------------------------------------------ training
class _HeadOnStates(keras.Model):
    """The readout alone, on precomputed memory states: what `fit` trains."""

    def __init__(self, readout, **kwargs):
        super().__init__(**kwargs)
        self.readout = readout

    def call(self, inputs):
        return self.readout(inputs["memory"], inputs["weights"])


@dataclasses.dataclass
class HeadTraining:
    """What `train_streaming_head` did: the loss before training and after each epoch, and its settings."""

    initial_loss: float
    losses: list[float]
    settings: dict


def _states_for_loss(memory, weights, labels, loss_on: str):
    count, clips = memory.shape[:2]
    if loss_on == "last":
        return memory[:, -1], weights[:, -1], np.asarray(labels, np.int64)
    return (memory.reshape((count * clips,) + memory.shape[2:]), weights.reshape((count * clips,) + weights.shape[2:]),
            np.repeat(np.asarray(labels, np.int64), clips))


def train_streaming_head(model: StreamingClassifier, tokens: np.ndarray, labels: np.ndarray, *, epochs: int = 40,
                         batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0,
                         loss_on: str = "every") -> HeadTraining:
    """Fits `model.readout` (backbone frozen) on tokens [M, S, N, D] of streams labelled [M]; see the module.

    The head is re-initialised from `seed` first (`keras.utils.set_random_seed`, which also seeds Python,
    NumPy and TensorFlow globally), so the result depends only on the data and the settings.
    """
    if loss_on not in LOSS_ON:
        raise ConfigError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    labels = np.asarray(labels, np.int64)
    if labels.shape != tokens.shape[:1]:
        raise DataError(f"labels must be one per stream: tokens {tokens.shape}, labels {labels.shape}")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise DataError(f"labels must lie in [0, {model.num_classes}); got [{labels.min()}, {labels.max()}]")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1, learning_rate > 0; got {epochs}, {batch_size}, "
                          f"{learning_rate}")
    memory, weights = memory_states(model, tokens)
    x_memory, x_weights, y = _states_for_loss(memory, weights, labels, loss_on)

    keras.utils.set_random_seed(seed)
    fresh = MemoryReadout(model.num_classes, model.token_width, name="readout")
    fresh.build()
    model.readout.set_weights(fresh.get_weights())

    head = _HeadOnStates(model.readout, name="streaming_head")
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inputs = {"memory": x_memory, "weights": x_weights}
    initial = float(head.evaluate(inputs, y, batch_size=max(batch_size, 256), verbose=0))
    history = head.fit(inputs, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    settings = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                "loss_on": loss_on, "streams": int(tokens.shape[0]), "clips_per_stream": int(tokens.shape[1])}
    return HeadTraining(initial, [float(v) for v in history.history["loss"]], settings)


# ------------------------------------------------------------------------------------- save / load
def backbone_fingerprint(backbone) -> str:
    """sha256 of the backbone's weights (names, shapes, float32 values): which tokens a head was trained on."""
    digest = hashlib.sha256()
    for variable in backbone.weights:
        value = np.ascontiguousarray(np.asarray(variable), dtype=np.float32)
        digest.update(f"{variable.path}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_streaming_head(model: StreamingClassifier, directory: str | os.PathLike, *, backbone_handle: str | None = None,
                        class_names: Sequence[str] | None = None, training: dict | None = None) -> Path:
    """Writes the head directory (`streaming_head.json` + `readout.npz`, see the module) atomically."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ExportError(f"streaming head path '{directory}' exists and is not an empty directory; choose a new one")
    if class_names is not None and len(class_names) != model.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a head of {model.num_classes} classes")
    names = [v.path for v in model.readout.weights]
    meta = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "num_classes": model.num_classes,
            "memory_size": model.memory_size, "num_iterations": model.memory.num_iterations,
            "token_width": model.token_width, "class_names": list(class_names) if class_names else None,
            "weights": names,
            "backbone": {"handle": backbone_handle, "fingerprint": backbone_fingerprint(model.backbone)},
            "training": training}
    with writing(directory), atomic_dir(directory) as tmp:
        with open(tmp / HEAD_WEIGHTS, "wb") as f:
            np.savez(f, **{f"w{i}": np.asarray(v) for i, v in enumerate(model.readout.weights)})
        (tmp / HEAD_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def read_streaming_head(directory: str | os.PathLike) -> dict:
    """The head directory's metadata (`streaming_head.json`), checked; CheckpointError naming the file."""
    path = Path(directory) / HEAD_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{directory}' is not a streaming head directory: cannot read {path} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise CheckpointError(f"{path}: 'format' must be {HEAD_FORMAT!r}")
    if meta.get("version") != HEAD_VERSION:
        raise CheckpointError(f"{path}: version {meta.get('version')!r} is not the supported {HEAD_VERSION}")
    for field in ("num_classes", "memory_size", "num_iterations", "token_width"):
        if not isinstance(meta.get(field), int) or meta[field] < 1:
            raise CheckpointError(f"{path}: '{field}' must be a positive integer, got {meta.get(field)!r}")
    return meta


def load_streaming_head(directory: str | os.PathLike, backbone) -> StreamingClassifier:
    """The `StreamingClassifier` of a saved head on `backbone` (a backbone or a classifier holding one)."""
    directory = Path(directory)
    meta = read_streaming_head(directory)
    backbone = getattr(backbone, "backbone", backbone)
    if int(backbone.output_width) != meta["token_width"]:
        raise ConfigError(f"the streaming head '{directory}' reads tokens of width {meta['token_width']}, but this "
                          f"backbone's are {backbone.output_width}")
    want = (meta.get("backbone") or {}).get("fingerprint")
    got = backbone_fingerprint(backbone)
    if want != got:
        handle = (meta.get("backbone") or {}).get("handle")
        raise ConfigError(f"the streaming head '{directory}' was trained on another backbone ({handle or 'unknown'}, "
                          f"weights sha256 {str(want)[:12]}...) than the one given (sha256 {got[:12]}...); a head is "
                          "only valid on the tokens it was trained on")
    model = StreamingClassifier(backbone, num_classes=meta["num_classes"], memory_size=meta["memory_size"],
                                num_iterations=meta["num_iterations"])
    path = directory / HEAD_WEIGHTS
    try:
        with np.load(path) as data:
            values = [data[f"w{i}"] for i in range(len(model.readout.weights))]
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot read the head weights {path}: {e}") from None
    for variable, value in zip(model.readout.weights, values, strict=True):
        if tuple(variable.shape) != value.shape:
            raise CheckpointError(f"{path}: weight {variable.path} has shape {value.shape}, expected "
                                  f"{tuple(variable.shape)}")
        variable.assign(value)
    return model
