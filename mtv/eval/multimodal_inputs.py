"""The flow and audio inputs of an M&M model for a decoded video, built as the TFRecord reader builds them.

`mtv predict` (and anything else that starts from a video file rather than from records) calls this, so a
clip gets the inputs that evaluating its record (`mtv data prepare --flow --audio`, then `mtv evaluate`) gives:

- clips: `mtv.data.sampling.eval_clip_indices`, one set of spans for every stream (or the clips given, e.g. one
  timeline window's);
- a `mtv.data.video.VideoSource` (what `mtv predict` passes) is read by seeking: only the clips' frames, the
  frames their flow pairs need, and each clip's audio span are decoded, giving the same inputs as a full decode;
- flow: Farnebäck from frame i to i + 1 at each clip index (the last frame of the video, which has no
  successor, takes the pair before it), quantised like stored TV-L1 JPEGs (`mtv.data.flow.compute_flow`,
  bound from the model's `dataset_configs.flow.bound`, default 20 px); spread evenly over the clip's span when
  the model has fewer flow frames than RGB frames; then the evaluation crops with `is_flow` (values rescaled
  with the image, clipped to [-1, 1]). This mirrors `mtv.data.tfrecord`'s record decoder (its `_flow`).
- audio: the track decoded at the model's sample rate (as `mtv data prepare --audio` decodes it),
  `num_frames` log-mel frames starting at each clip's first frame (`mtv.data.audio.clip_waveform`), the same
  spectrogram for each spatial crop. A window that runs past the end of the video is zero-padded, as the
  record reader pads it (the result's notes say how many did).
- a stream the video cannot give is a `DataError` naming the file and the stream, or, with
  `missing_modality='zeros'`, `mtv.models.missing.missing_input` plus a note: no audio track, or one that
  leaves more than `mtv.data.audio.AUDIO_GAP_TOLERANCE` s of the frames without sound (the rule by which
  `mtv data prepare --audio` refuses a video, `check_audio_covers`); a single frame, so no flow.

Flow is computed on the frames as decoded for evaluation (smaller side at the model's `min_resize`), the
resolution `mtv evaluate` on a CSV of videos prepares its records at.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from mtv.errors import ConfigError, DataError

MISSING_MODES = ("error", "zeros")


def _section(meta: Mapping, name: str) -> tuple[dict, str]:
    """`name`'s settings from preset metadata: `preprocessing.<name>`, else the training config's dataset_configs."""
    pre = meta.get("preprocessing") or {}
    if isinstance(pre, Mapping) and isinstance(pre.get(name), Mapping):
        return dict(pre[name]), f"metadata.preprocessing.{name}"
    config = meta.get("config")
    if isinstance(config, Mapping):
        section = (config.get("dataset_configs") or {}).get(name)
        if isinstance(section, Mapping):
            return dict(section), f"metadata.config.dataset_configs.{name}"
    return {}, ""


def audio_settings(model) -> tuple:
    """(AudioConfig, spectrogram frames) of a model with an audio input: its preset's settings, else the defaults."""
    from mtv.data.audio import AudioConfig

    if "audio" not in model.input_shapes:
        raise ConfigError(f"the model has no audio input; its inputs are {sorted(model.input_shapes)}")
    frames, mel_bins = (int(s) for s in model.input_shapes["audio"][:2])
    section, where = _section(getattr(model, "metadata", None) or {}, "audio")
    fields = {f.name for f in dataclasses.fields(AudioConfig)}
    unknown = sorted(set(section) - fields - {"num_frames"})
    if unknown:
        raise ConfigError(f"{where} has unknown fields {unknown}; expected num_frames and {sorted(fields)}")
    for key, want in (("num_frames", frames), ("num_mel_bins", mel_bins)):
        if section.get(key) is not None and int(section[key]) != want:
            raise ConfigError(f"{where}.{key} is {section[key]} but the model's audio input "
                              f"{tuple(model.input_shapes['audio'])} needs {want}")
    section.pop("num_frames", None)
    return AudioConfig(**{**section, "num_mel_bins": mel_bins}), frames


def flow_bound(model) -> float:
    """Pixels that map to +-1 in the model's flow input: its preset's `flow.bound`, else `mtv.data.flow.FLOW_BOUND`."""
    from mtv.data.flow import FLOW_BOUND

    section, where = _section(getattr(model, "metadata", None) or {}, "flow")
    bound = section.get("bound", FLOW_BOUND)
    if isinstance(bound, bool) or not isinstance(bound, int | float) or bound <= 0:
        raise ConfigError(f"{where}.bound must be a positive number of pixels, got {bound!r}")
    return float(bound)


def flow_pair_starts(clips: np.ndarray, *, stride: int, flow_frames: int, num_rgb: int) -> np.ndarray:
    """Per clip, the RGB frame `i` of each flow frame (the motion from `i` to `i + 1`): int64 [clips, flow_frames].

    As the record reader: the clip's own indices when the model has as many flow frames as RGB frames, else
    `flow_frames` frames spread evenly over the clip's span; the video's last frame takes the pair before it.
    """
    clips = np.asarray(clips, np.int64)
    num_frames = clips.shape[1]
    if flow_frames != num_frames:
        span = np.linspace(0, (num_frames - 1) * stride, flow_frames).round().astype(np.int64)
        clips = (clips[:, :1] + span[None]) % num_rgb
    return np.minimum(clips, num_rgb - 2)


def flow_views(frames, clips: np.ndarray, config, *, flow_frames: int, bound: float,
               num_rgb: int | None = None) -> np.ndarray:
    """Flow views for clip indices [clips, T]: float32 [views, flow_frames, s, s, 2].

    `frames` are uint8 [N, H, W, 3], or {index: frame} holding at least `flow_frame_indices`' frames of a
    video of `num_rgb` frames (what a seek-based read decodes).
    """
    from mtv.data.flow import compute_flow
    from mtv.data.transforms import eval_transform

    num_rgb = len(frames) if num_rgb is None else num_rgb
    starts = flow_pair_starts(clips, stride=config.stride, flow_frames=flow_frames, num_rgb=num_rgb)
    unique, inverse = np.unique(starts.reshape(-1), return_inverse=True)
    # Farnebäck of each pair on its own equals computing the whole video's flow and picking these frames.
    flow = np.concatenate([compute_flow(np.stack([frames[i], frames[i + 1]]), bound=bound) for i in unique])
    flow = flow[inverse.reshape(-1)].reshape(len(clips), flow_frames, *flow.shape[1:])
    return np.asarray(eval_transform(flow, config, is_flow=True))


def flow_frame_indices(clips: np.ndarray, *, stride: int, flow_frames: int, num_rgb: int) -> np.ndarray:
    """The RGB frames the flow of these clips is computed from: each pair's two frames, sorted and distinct."""
    starts = flow_pair_starts(clips, stride=stride, flow_frames=flow_frames, num_rgb=num_rgb)
    return np.unique(np.concatenate([starts.reshape(-1), starts.reshape(-1) + 1]))


def audio_views(video, clips: np.ndarray, config, audio_config, audio_frames: int) -> tuple[np.ndarray, int]:
    """Log-mel views [views, audio_frames, mel_bins, 1] of a video's track, and how many clip windows were padded.

    `video` is a decoded `Video` (its whole track, resampled once) or a `VideoSource` (only each clip's span is
    decoded and resampled, `mtv.data.video.read_audio_span`: the same samples).
    """
    from mtv.data.audio import clip_waveform, log_mel_spectrogram, num_samples_for, resample
    from mtv.data.video import VideoSource

    rate = audio_config.sample_rate
    length = num_samples_for(audio_frames, audio_config)
    total = int(round(video.duration * rate))  # the track spans exactly the frames
    segments, padded = [], 0
    if isinstance(video, VideoSource):
        for clip in np.asarray(clips):
            start = int(round(clip[0] / video.fps * rate))
            segments.append(video.audio(start, length, rate))
            padded += start + length > total
    else:
        waveform = resample(video.audio, video.sample_rate, rate)  # a no-op when decoded at `rate`; once
        for clip in np.asarray(clips):
            segments.append(clip_waveform(waveform, rate, video.fps, clip, audio_config, audio_frames))
            padded += int(round(clip[0] / video.fps * rate)) + length > waveform.shape[0]
    spectrogram = log_mel_spectrogram(np.stack(segments), audio_config).numpy()[..., None]
    return np.repeat(spectrogram, config.num_spatial_crops, axis=0), padded


def check_missing_mode(missing_modality: str) -> str:
    """`missing_modality`, checked: 'error' (refuse a video without a stream the model needs) or 'zeros'."""
    if missing_modality not in MISSING_MODES:
        raise ConfigError(f"missing_modality must be one of {list(MISSING_MODES)}, got {missing_modality!r}")
    return missing_modality


def multimodal_views(video, model, config, *, missing_modality: str = "error",
                     clips: np.ndarray | None = None) -> tuple[dict, list[str]]:
    """Every input of a multimodal model for the evaluation clips of a video: (inputs by name, notes).

    `video` is a decoded `Video` whose frames are at the evaluation resolution (the preprocessor's resize), or
    a `VideoSource` resizing the same way, from which only the frames and audio spans of these clips are read.
    `clips` (int [clips, T]) defaults to the evaluation clips (`eval_clip_indices`). Each input is
    [views, ...] with views = clips x crops, clip-major, the layout of the record reader's evaluation inputs.
    """
    from mtv.data.audio import check_audio_covers
    from mtv.data.sampling import eval_clip_indices
    from mtv.data.transforms import eval_transform
    from mtv.data.video import VideoSource
    from mtv.models.missing import missing_input

    check_missing_mode(missing_modality)
    shapes = model.input_shapes
    if clips is None:
        clips = eval_clip_indices(video.num_frames, config.num_frames, config.stride, config.num_test_clips,
                                  source=str(video.path))
    clips = np.asarray(clips, np.int64)
    num_views = len(clips) * config.num_spatial_crops
    if isinstance(video, VideoSource):  # one read of every frame any stream needs
        needed = [clips.reshape(-1)]
        if "flow" in shapes and video.num_frames >= 2:
            needed.append(flow_frame_indices(clips, stride=config.stride, flow_frames=int(shapes["flow"][0]),
                                             num_rgb=video.num_frames))
        frames = video.frames_at(np.concatenate(needed))
        _check_sizes(frames, video.path)
    else:
        frames = video.frames
    inputs: dict[str, np.ndarray] = {}
    notes: list[str] = []

    def missing(name: str, reason: str) -> None:
        if missing_modality == "error":
            raise DataError(f"{reason}, and the model needs its '{name}' input {tuple(shapes[name])}; pass "
                            "missing_modality='zeros' (mtv predict --missing_modality=zeros) to feed the "
                            "missing-modality input of mtv.models.missing instead (meaningful only for a model "
                            "trained with modality dropout)")
        inputs[name] = missing_input((num_views, *shapes[name]))
        notes.append(f"{name}: {reason}; fed the missing-modality input (zeros, mtv.models.missing)")

    if "rgb" in shapes:
        rgb = frames[clips] if isinstance(frames, np.ndarray) else _stack(frames, clips)
        inputs["rgb"] = np.asarray(eval_transform(rgb, config))
    if "flow" in shapes:
        if video.num_frames < 2:
            missing("flow", f"'{video.path}' has a single frame (flow needs two)")
        else:
            inputs["flow"] = flow_views(frames, clips, config, flow_frames=int(shapes["flow"][0]),
                                        bound=flow_bound(model), num_rgb=video.num_frames)
    if "audio" in shapes:
        try:
            check_audio_covers(video.audio_stand_in() if isinstance(video, VideoSource) else video)
        except DataError as e:
            missing("audio", str(e))
        else:
            audio_config, audio_frames = audio_settings(model)
            inputs["audio"], padded = audio_views(video, clips, config, audio_config, audio_frames)
            if padded:
                notes.append(f"audio: {padded} of {len(clips)} clip windows ({audio_frames} log-mel frames from the "
                             "clip's first frame) run past the end of the video and are zero-padded")
    return {name: inputs[name] for name in shapes}, notes


def _check_sizes(frames: Mapping[int, np.ndarray], path) -> None:
    """Refuses frames of different sizes (a frames directory of mixed images) with a DataError naming `path`."""
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise DataError(f"frames in '{path}' have different sizes: {sorted(shapes)}")


def _stack(frames: Mapping[int, np.ndarray], indices: np.ndarray) -> np.ndarray:
    """{index: frame} at `indices` (any shape): [*indices.shape, H, W, C]."""
    out = np.stack([frames[int(i)] for i in indices.reshape(-1)])
    return out.reshape(*indices.shape, *out.shape[1:])
