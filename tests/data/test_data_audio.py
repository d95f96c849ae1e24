"""Log-mel spectrograms of a video's own audio, aligned with clip frames."""

from __future__ import annotations

import numpy as np
import pytest

from mtv.data.audio import (
    AUDIO_GAP_TOLERANCE,
    AudioConfig,
    check_audio_covers,
    clip_log_mel,
    clip_waveform,
    log_mel_spectrogram,
    resample,
)
from mtv.data.video import Video
from mtv.errors import ConfigError, DataError


@pytest.mark.parametrize("name", ["eye_makeup_audio__mmaction2_test.avi", "flipping_pancake__decord.mkv"])
def test_clip_log_mel_is_the_matching_slice_of_the_whole_track(real_videos, name):
    video = real_videos[name]
    cfg = AudioConfig()
    full = log_mel_spectrogram(resample(video.audio, video.sample_rate, cfg.sample_rate), cfg).numpy()
    start_frame = int(2 * video.fps)  # 2.0 s: 32000 samples at 16 kHz = 200 hops of 160
    indices = start_frame + 2 * np.arange(16)  # 16 frames at stride 2
    clip = clip_log_mel(video, indices, cfg)
    seconds = (indices[-1] + 1 - indices[0]) / video.fps
    expected_frames = 1 + (round(seconds * 16000) - 400) // 160
    assert clip.shape == (expected_frames, 128)
    np.testing.assert_allclose(clip, full[200:200 + expected_frames], atol=1e-3)
    fixed = clip_log_mel(video, indices, cfg, num_spec_frames=50)
    assert fixed.shape == (50, 128)
    np.testing.assert_allclose(fixed, full[200:250], atol=1e-3)


def test_mel_peak_follows_the_tone():
    rate = 16000
    t = np.arange(rate) / rate
    low = log_mel_spectrogram(np.sin(2 * np.pi * 300 * t).astype(np.float32)).numpy()
    high = log_mel_spectrogram(np.sin(2 * np.pi * 3000 * t).astype(np.float32)).numpy()
    assert low.shape == (1 + (rate - 400) // 160, 128)
    assert np.argmax(low.mean(0)) + 20 < np.argmax(high.mean(0))


def test_clip_past_the_end_is_zero_padded():
    video = Video(np.zeros((10, 2, 2, 3), np.uint8), fps=10.0, audio=np.ones(16000, np.float32), sample_rate=16000)
    wave = clip_waveform(video.audio, 16000, 10.0, np.arange(8, 12) % 10, AudioConfig(), num_spec_frames=100)
    assert wave.shape == ((100 - 1) * 160 + 400,)
    assert wave[:3200].min() == 1.0 and wave[3200:].max() == 0.0  # 0.2 s of sound left after frame 8


def test_resample_keeps_a_tone():
    tone = np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100).astype(np.float32)
    out = resample(tone, 44100, 16000)
    assert out.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 1000  # 1 Hz bins over 1 s


def test_errors():
    with pytest.raises(ConfigError, match="fmax"):
        AudioConfig(fmax=9000.0)
    with pytest.raises(ConfigError, match="positive"):
        AudioConfig(hop_ms=0)
    with pytest.raises(DataError, match="no audio"):
        clip_log_mel(Video(np.zeros((4, 2, 2, 3), np.uint8), 10.0, path="silent.mp4"), np.arange(4))


def test_check_audio_covers_refuses_missing_or_short_sound():
    frames = np.zeros((20, 2, 2, 3), np.uint8)  # 2 s at 10 fps
    with pytest.raises(DataError, match="'a.mp4' has no audio track"):
        check_audio_covers(Video(frames, 10.0, path="a.mp4"))
    short = Video(frames, 10.0, audio=np.zeros(32000, np.float32), sample_rate=16000, path="a.mp4",
                  audio_span=(0.0, 1.0))
    with pytest.raises(DataError, match=r"'a.mp4': the audio track covers 0.000-1.000 s of the 2.000 s of frames "
                                        r"\(1.000 s without sound"):
        check_audio_covers(short)
    short.audio_span = (AUDIO_GAP_TOLERANCE / 2, 2.0)  # a gap within the tolerance is fine
    check_audio_covers(short)
