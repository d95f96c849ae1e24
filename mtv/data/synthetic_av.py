"""A generated audio-visual task whose label needs both streams: camera motion x a sound mixed into real audio.

Each example is a camera-motion clip (`mtv.data.synthetic`, rendered from real footage) with a soundtrack:
the real audio of a recorded clip (a random stretch of it) with one of three sounds mixed in. The label is
the pair (motion, sound), so a model that sees only the frames can at best tell which of `len(SOUNDS)`
classes it is among, and one that only hears can at best tell which of `len(MOTIONS)`:

  motions  static, pan_right_fast, tilt_down_fast          (camera motion, seen)
  sounds   none, low_tone, high_beeps                       (heard)
  label    motion_index * len(SOUNDS) + sound_index         (9 classes, 'pan_right_fast+low_tone', ...)

`none` adds nothing to the recorded audio; `low_tone` is a steady sine of 220-330 Hz; `high_beeps` is a
1.8-2.6 kHz sine gated on and off at 6-10 Hz. Pitch, gating rate, level (-4 to +4 dB relative to the
recording's RMS) and phase are drawn per example, so neither sound is one fixed waveform.

Footage and recordings are split as the camera-motion dataset splits its footage: the 'heldout' split renders
from the held-out video (`synthetic.HELDOUT_VIDEO`) and mixes into its own recording, which the 'train' split
never uses. `write_records` writes the examples as the TFRecords `mtv data prepare` writes (frames, the
waveform, its rate), so they train and evaluate through the ordinary `video_tfrecord_dataset` path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtv.data import synthetic
from mtv.errors import DataError

MOTIONS = ("static", "pan_right_fast", "tilt_down_fast")
SOUNDS = ("none", "low_tone", "high_beeps")
CLASSES = tuple(f"{m}+{s}" for m in MOTIONS for s in SOUNDS)
SAMPLE_RATE = 16000


def class_names() -> list[str]:
    """The 9 class names, in label order."""
    return list(CLASSES)


def split_label(label: int) -> tuple[int, int]:
    """(motion index, sound index) of a label."""
    return divmod(int(label), len(SOUNDS))


def recordings(videos: str | os.PathLike, *, split: str = "train") -> list[np.ndarray]:
    """Mono audio tracks at `SAMPLE_RATE` of the videos with sound under `videos`, for one split."""
    paths = sorted(p for p in Path(videos).iterdir() if p.suffix.lower() in synthetic.VIDEO_SUFFIXES)
    if split == "train":
        paths = [p for p in paths if synthetic.HELDOUT_VIDEO not in p.name]
    elif split == "heldout":
        paths = [p for p in paths if synthetic.HELDOUT_VIDEO in p.name]
    else:
        raise DataError(f"split must be 'train' or 'heldout', got {split!r}")
    tracks = []
    for path in paths:
        track = _audio_track(path)
        if track.size and float(np.sqrt(np.mean(track ** 2))) > 1e-3:
            tracks.append(track)
    if not tracks:
        raise DataError(f"no video with a real audio track for split '{split}' in {videos}")
    return tracks


def _audio_track(path: Path) -> np.ndarray:
    """The whole audio track of a video, mono float32 at SAMPLE_RATE (PyAV's resampler), or empty if none."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def mix_sound(bed: np.ndarray, sound: int, rng: np.random.Generator) -> np.ndarray:
    """The recording `bed` (float32 mono at SAMPLE_RATE) with sound `sound` (index into SOUNDS) mixed in."""
    bed = np.asarray(bed, np.float32)
    if SOUNDS[sound] == "none":
        return bed.copy()
    t = np.arange(bed.shape[0]) / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi)
    if SOUNDS[sound] == "low_tone":
        wave = np.sin(2 * np.pi * rng.uniform(220, 330) * t + phase)
    else:  # high_beeps: a high tone switched on and off
        gate = np.sin(2 * np.pi * rng.uniform(6, 10) * t + rng.uniform(0, 2 * np.pi)) > 0
        wave = np.sin(2 * np.pi * rng.uniform(1800, 2600) * t + phase) * gate
    rms = max(float(np.sqrt(np.mean(bed ** 2))), 1e-3)
    level = rms * 10 ** (rng.uniform(-4, 4) / 20) * np.sqrt(2)  # a sine's RMS is its amplitude / sqrt(2)
    return (bed + level * wave).astype(np.float32)


def generate(count: int, *, sources: Sequence[np.ndarray], beds: Sequence[np.ndarray], num_frames: int,
             size: int, fps: float, seed: int | Sequence[int],
             still_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` examples: (uint8 clips [N, T, size, size, 3], float32 audio [N, samples], int64 labels [N]).

    Labels are balanced (cycled through the classes, then shuffled). The audio lasts the clip plus half a
    second, so any spectrogram that starts at the clip's first frame finds sound under it.
    """
    if not beds:
        raise DataError("generate() needs at least one recording to mix sounds into")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES)).astype(np.int64)
    motions = [synthetic.CLASSES.index(m) for m in MOTIONS]
    clips, _ = synthetic.generate(count, sources=sources, num_frames=num_frames, size=size, seed=rng.integers(2**31),
                                  labels=[motions[split_label(y)[0]] for y in labels], still_fraction=still_fraction)
    samples = int(round((num_frames / fps + 0.5) * SAMPLE_RATE))
    audio = np.empty((count, samples), np.float32)
    for i, label in enumerate(labels):
        bed = beds[int(rng.integers(0, len(beds)))]
        if bed.shape[0] < samples:
            bed = np.tile(bed, samples // bed.shape[0] + 1)
        start = int(rng.integers(0, bed.shape[0] - samples + 1))
        audio[i] = mix_sound(bed[start:start + samples], split_label(label)[1], rng)
    return clips, audio, labels


def write_records(out_dir: str | os.PathLike, name: str, count: int, *, videos: str | os.PathLike, split: str,
                  num_frames: int, size: int, seed: int, fps: float = 25.0, source_min_resize: int = 96,
                  num_shards: int = 1) -> list[Path]:
    """Generates `count` examples of `split` and writes them as TFRecords `<out_dir>/<name>-*`."""
    from mtv.data.tfrecord import ClipExample, write_tfrecords

    sources = synthetic.video_sources(videos, split=split, min_resize=source_min_resize)
    clips, audio, labels = generate(count, sources=sources, beds=recordings(videos, split=split),
                                    num_frames=num_frames, size=size, fps=fps, seed=seed)
    examples = (ClipExample(f"{name}_{i:05d}", clips[i], {"label": [int(labels[i])]},
                            {"label": [CLASSES[labels[i]]]}, fps=fps, audio=audio[i], sample_rate=SAMPLE_RATE)
                for i in range(count))
    return write_tfrecords(examples, out_dir, name=name, num_shards=num_shards)
