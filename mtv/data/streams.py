"""The model's input streams and the data that feeds them (MTV: 'rgb' alone; M&M: 'rgb', 'flow', 'audio').

A model describes its streams in its spec (`spec['modalities']`, `mtv.models.spec`): per stream the
frames and image size (rgb, flow) or spectrogram frames and mel bins (audio). The data side reads that
description instead of assuming one video tensor: `reader_configs` sets the TFRecord reader's stream sizes
from it, `select_streams` turns what a dataset yields into exactly the structure the model takes (a bare
clip for one stream, else a dict), and `stream_array_source` trains from in-memory dicts of streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtv.errors import DataError
from mtv.models.spec import MODALITIES

RGB_ONLY = {"rgb": {}}


def stream_names(streams: Mapping | Sequence[str] | None) -> tuple[str, ...]:
    """The stream names in the fixed order rgb, flow, audio (RGB alone when `streams` is empty)."""
    names = tuple(m for m in MODALITIES if m in (streams or ()))
    return names or ("rgb",)


def reader_modalities(streams: Mapping | Sequence[str] | None, *, skip: Sequence[str] = ()) -> tuple[str, ...]:
    """What `mtv.data.tfrecord.make_dataset` must decode for these streams, less `skip` (RGB always: the
    reader samples the clip from the RGB frames)."""
    return ("rgb",) + tuple(m for m in stream_names(streams) if m != "rgb" and m not in skip)


def reader_configs(dataset_configs: Mapping, streams: Mapping | None) -> dict:
    """`dataset_configs` with the reader's sizes set from the model's streams (spec['modalities']).

    The model is the authority: RGB frames and crop, `flow.num_frames`, `audio.num_frames` and
    `audio.num_mel_bins`, so a config that gives a size only in `model.modalities` still reads it.
    """
    dc = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(dataset_configs or {}).items()}
    streams = dict(streams or {})
    video = streams.get("rgb") or streams.get("flow")
    if video:
        height, width = video["image_size"]
        if height != width:
            raise DataError(f"the model takes {height}x{width} frames; the TFRecord reader crops squares "
                            "(dataset_configs.crop_size)")
        dc["crop_size"] = int(height)
        if "rgb" in streams or not dc.get("num_frames"):  # a flow-only model's RGB clip may be any length
            dc["num_frames"] = int(video["num_frames"])
    if streams.get("flow"):
        dc["flow"] = {**(dc.get("flow") or {}), "num_frames": int(streams["flow"]["num_frames"])}
    if streams.get("audio"):
        dc["audio"] = {**(dc.get("audio") or {}), "num_frames": int(streams["audio"]["num_frames"]),
                       "num_mel_bins": int(streams["audio"]["mel_bins"])}
    return dc


def select_streams(x: Any, names: Sequence[str], *, where: str = "the data") -> Any:
    """What a dataset yielded (a bare clip or a dict of streams) as the model takes it.

    One stream: the bare tensor; several: a dict with exactly those keys (extra streams are dropped).
    """
    names = list(names)
    if isinstance(x, Mapping):
        missing = [m for m in names if m not in x]
        if missing:
            raise DataError(f"{where} gives the streams {sorted(x)}, but the model also takes {missing}; use data "
                            "that holds them (TFRecords prepared with --audio / --flow, or a dict of arrays)")
        return x[names[0]] if len(names) == 1 else {m: x[m] for m in names}
    if len(names) == 1:
        return x
    raise DataError(f"{where} gives one video tensor, but the model takes the streams {names}; use a dataset "
                    "that reads them (video_tfrecord_dataset or video_csv, or train_data=({stream: array}, labels))")


def normalize_streams(streams: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model-ready float32 streams: uint8 RGB scaled to [-1, 1]; flow and audio must already be float."""
    from mtv.data.sources import normalize_frames

    out = {}
    for name, value in streams.items():
        value = np.asarray(value)
        if name not in MODALITIES:
            raise DataError(f"unknown stream {name!r} in the arrays; known streams: {', '.join(MODALITIES)}")
        if name != "rgb" and value.dtype == np.uint8:
            raise DataError(f"the '{name}' arrays are uint8; give them as the model takes them (float32: flow in "
                            "[-1, 1], audio a log-mel), as mtv.data.tfrecord.make_dataset yields them")
        out[name] = normalize_frames(value) if name == "rgb" else value.astype(np.float32)
    return out


def stream_array_source(streams: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                        num_classes: Mapping[str, int], *, name: str = "data"):
    """A `mtv.data.sources.Source` of in-memory dicts of streams, e.g. {'rgb': uint8 [N, T, H, W, 3],
    'flow': float [N, T, H, W, 2], 'audio': float [N, F, M, 1]}, with int or one-hot labels.

    Batch `s` takes the examples of a fresh permutation per epoch drawn from (seed, epoch), as
    `mtv.data.sources.array_source`.
    """
    import tensorflow as tf

    from mtv.data.sources import PipelineShare, Source, epoch_indices, one_hot, step_dataset

    streams = {m: np.asarray(streams[m]) for m in MODALITIES if m in streams}
    if not streams:
        raise DataError(f"dataset '{name}': the dict of arrays holds no stream ({', '.join(MODALITIES)})")
    counts = {m: len(v) for m, v in streams.items()}
    hot = {k: one_hot(v, num_classes[k], k) for k, v in labels.items()}
    counts.update({f"'{k}' labels": len(v) for k, v in hot.items()})
    if len(set(counts.values())) != 1:
        raise DataError(f"dataset '{name}': the arrays disagree on the number of examples: {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise DataError(f"dataset '{name}' is empty")
    normalize_streams({m: v[:1] for m, v in streams.items()})  # refuse bad dtypes before training starts

    def make(batch_size: int, start_step: int, seed: int,
             input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        share = PipelineShare.of(batch_size, input_context)
        rows = slice(share.start, share.stop)

        def batch_at(step: int):
            idx = epoch_indices(step, batch_size, count, seed)[rows]
            return normalize_streams({m: v[idx] for m, v in streams.items()}), {k: v[idx] for k, v in hot.items()}

        local = share.stop - share.start
        sig = ({m: tf.TensorSpec((local, *v.shape[1:]), tf.float32) for m, v in streams.items()},
               {k: tf.TensorSpec((local, v.shape[1]), tf.float32) for k, v in hot.items()})
        ds = step_dataset(batch_at, sig, start_step)
        return ds if input_context is None else share.split(ds)

    return Source(name, {k: v.shape[1] for k, v in hot.items()}, count, make)
