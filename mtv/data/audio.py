"""Log-mel spectrograms of a video's own audio track, aligned with the frames of a clip.

Defaults follow the audio input of MBT / M&M (AST-style features): 16 kHz mono, 25 ms Hann windows
every 10 ms (100 spectrogram frames a second), 128 mel bins from 20 Hz to the Nyquist frequency,
natural log of the mel power plus 1e-6. The STFT and mel matrix are `tf.signal`'s.

Alignment: sample `round(i / fps * sample_rate)` of a `Video`'s audio is the time of frame `i`
(see `mtv.data.video`), so a clip whose first frame is `i0` starts its spectrogram there.

Coverage: `check_audio_covers` refuses a video (or segment) whose audio track is absent or ends (or
starts) more than `AUDIO_GAP_TOLERANCE` seconds inside its frames, instead of storing zeros as sound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from mtv.data.video import Video
from mtv.errors import ConfigError, DataError

# Containers end the audio track within an audio frame (20-64 ms) of the video; a gap up to this many
# seconds is zero-padded, a longer one means the span has no sound to store.
AUDIO_GAP_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Log-mel settings; `fmax=None` means the Nyquist frequency."""

    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    num_mel_bins: int = 128
    fmin: float = 20.0
    fmax: float | None = None
    log_offset: float = 1e-6

    def __post_init__(self):
        if self.sample_rate <= 0 or self.window_ms <= 0 or self.hop_ms <= 0 or self.num_mel_bins <= 0:
            raise ConfigError(f"AudioConfig needs positive sample_rate, window_ms, hop_ms, num_mel_bins: {self}")
        if not 0 <= self.fmin < self.upper_hz <= self.sample_rate / 2:
            raise ConfigError(f"AudioConfig needs 0 <= fmin ({self.fmin}) < fmax ({self.upper_hz}) <= "
                              f"sample_rate / 2 ({self.sample_rate / 2})")

    @property
    def upper_hz(self) -> float:
        """fmax, or the Nyquist frequency."""
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2

    @property
    def window(self) -> int:
        """STFT window in samples."""
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop(self) -> int:
        """STFT hop in samples."""
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def fft_length(self) -> int:
        """Next power of two at or above the window."""
        return 1 << (self.window - 1).bit_length()


def resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum (float32 out)."""
    audio = np.asarray(audio, np.float32)
    if rate == new_rate or audio.size == 0:
        return audio
    n_out = int(round(audio.shape[0] * new_rate / rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(spectrum.shape[0], n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, np.complex128)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / audio.shape[0])).astype(np.float32)


def log_mel_spectrogram(waveform, config: AudioConfig = AudioConfig()) -> tf.Tensor:
    """float32 [..., samples] at config.sample_rate -> float32 [..., frames, num_mel_bins].

    Frames are `1 + (samples - window) // hop` (no padding): frame `j` covers samples
    `[j * hop, j * hop + window)`.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    stft = tf.signal.stft(waveform, config.window, config.hop, config.fft_length,
                          window_fn=tf.signal.hann_window, pad_end=False)
    power = tf.math.square(tf.abs(stft))
    mel = tf.signal.linear_to_mel_weight_matrix(config.num_mel_bins, config.fft_length // 2 + 1,
                                                config.sample_rate, config.fmin, config.upper_hz)
    return tf.math.log(tf.tensordot(power, mel, 1) + config.log_offset)


def num_samples_for(num_spec_frames: int, config: AudioConfig = AudioConfig()) -> int:
    """Waveform length giving exactly `num_spec_frames` spectrogram frames."""
    return (num_spec_frames - 1) * config.hop + config.window


def clip_waveform(audio: np.ndarray, sample_rate: int, fps: float, indices: np.ndarray,
                  config: AudioConfig = AudioConfig(), num_spec_frames: int | None = None) -> np.ndarray:
    """The audio under a clip, resampled to config.sample_rate and zero-padded past the end.

    It starts at the clip's first frame and lasts until the end of its last frame, or exactly
    long enough for `num_spec_frames` spectrogram frames when that is given.
    """
    indices = np.asarray(indices).reshape(-1)
    audio = resample(audio, sample_rate, config.sample_rate)
    start = int(round(indices[0] / fps * config.sample_rate))
    if num_spec_frames is not None:
        length = num_samples_for(num_spec_frames, config)
    else:
        last = indices.max() if np.all(np.diff(indices) >= 0) else indices[0] + len(indices) - 1
        length = max(int(round((last + 1) / fps * config.sample_rate)) - start, config.window)
    segment = audio[start:start + length]
    if segment.shape[0] < length:
        segment = np.concatenate([segment, np.zeros(length - segment.shape[0], np.float32)])
    return segment


def clip_log_mel(video: Video, indices: np.ndarray, config: AudioConfig = AudioConfig(),
                 num_spec_frames: int | None = None) -> np.ndarray:
    """Log-mel of the video's own audio under the clip `indices`: float32 [frames, num_mel_bins]."""
    if video.audio is None or video.sample_rate is None:
        raise DataError(f"video '{video.path}' has no audio track")
    segment = clip_waveform(video.audio, video.sample_rate, video.fps, indices, config, num_spec_frames)
    return log_mel_spectrogram(segment, config).numpy()


def check_audio_covers(video: Video, tolerance: float = AUDIO_GAP_TOLERANCE, what: str | None = None) -> None:
    """Raises DataError unless the video's own audio track covers its frames to within `tolerance` s.

    `what` names the span in the message (default: the video's path).
    """
    what = what or f"'{video.path}'"
    if video.audio is None or video.sample_rate is None:
        raise DataError(f"{what} has no audio track")
    start, stop = video.audio_span if video.audio_span is not None else (0.0, video.duration)
    missing = video.duration - max(stop - start, 0.0)
    if missing > tolerance:
        raise DataError(f"{what}: the audio track covers {start:.3f}-{stop:.3f} s of the {video.duration:.3f} s of "
                        f"frames ({missing:.3f} s without sound, more than the {tolerance} s allowed)")


def resample_tf(audio, rate, new_rate: int):
    """`resample` as TF ops (float64 spectrum, the same bins kept), for a rate known only in-graph."""
    audio = tf.convert_to_tensor(audio, tf.float32)
    rate = tf.cast(rate, tf.float64)

    def change():
        n_in = tf.shape(audio, out_type=tf.int64)[0]
        n_out = tf.cast(tf.round(tf.cast(n_in, tf.float64) * new_rate / rate), tf.int64)
        spectrum = tf.signal.rfft(tf.cast(audio, tf.float64))
        keep = tf.minimum(tf.shape(spectrum, out_type=tf.int64)[0], n_out // 2 + 1)
        out = tf.pad(spectrum[:keep], [[0, n_out // 2 + 1 - keep]])
        wave = tf.signal.irfft(out, tf.reshape(tf.cast(n_out, tf.int32), [1]))
        return tf.cast(wave * (tf.cast(n_out, tf.float64) / tf.cast(n_in, tf.float64)), tf.float32)

    same = tf.logical_or(tf.equal(rate, float(new_rate)), tf.equal(tf.size(audio), 0))
    return tf.cond(same, lambda: audio, change)


def clip_waveform_tf(audio, sample_rate, fps, indices, config: AudioConfig = AudioConfig(),
                     num_spec_frames: int | None = None) -> tf.Tensor:
    """`clip_waveform` as TF ops: float32 [samples]; `indices` is one clip's frame indices."""
    indices = tf.reshape(tf.cast(indices, tf.int64), [-1])
    audio = resample_tf(audio, sample_rate, config.sample_rate)
    fps = tf.cast(fps, tf.float64)

    def at(frame):  # round(frame / fps * rate), in clip_waveform's order of operations
        return tf.cast(tf.round(tf.cast(frame, tf.float64) / fps * config.sample_rate), tf.int64)

    start = at(indices[0])
    if num_spec_frames is not None:
        length = tf.constant(num_samples_for(num_spec_frames, config), tf.int64)
    else:
        ordered = tf.reduce_all(indices[1:] >= indices[:-1])
        last = tf.where(ordered, tf.reduce_max(indices), indices[0] + tf.size(indices, out_type=tf.int64) - 1)
        length = tf.maximum(at(last + 1) - start, config.window)
    available = tf.shape(audio, out_type=tf.int64)[0]
    padded = tf.pad(audio, [[0, tf.maximum(start + length - available, 0)]])
    return padded[start:start + length]
