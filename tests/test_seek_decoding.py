"""Seek-based reads (`mtv.data.video.VideoSource`, `read_frames_at`, `read_audio_span`) give a full decode's frames
and audio: real clips, a generated AVI whose B-frames come out of display order, frames directories."""

from __future__ import annotations

import logging

import av
import cv2
import numpy as np
import pytest

from mtv.data.preprocessor import VideoPreprocessor
from mtv.data.sampling import eval_clip_indices
from mtv.data.video import VideoSource, load_video, probe_video, read_audio_span, read_frames_at, read_video
from mtv.errors import DataError
from tests.data.synthetic import REAL_CLIPS, smooth_texture, write_frames_dir

RESIZE = VideoPreprocessor(32, 40).resize


def moving_frames(num: int, height: int = 72, width: int = 96) -> np.ndarray:
    """A texture sliding 3 px a frame with the frame number drawn on it: uint8 [num, H, W, 3]."""
    base = smooth_texture(height, 3 * width)
    frames = []
    for i in range(num):
        grey = np.roll(base, 3 * i, axis=1)[:, :width]
        frame = np.stack([grey, np.roll(grey, 5, axis=0), 255 - grey], axis=-1).astype(np.uint8)
        cv2.putText(frame, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        frames.append(frame)
    return np.stack(frames)


def write_b_frame_avi(path, frames: np.ndarray, fps: int = 25):
    """H.264 with B-frames in AVI: the decoder hands frames out of display order, a keyframe every 12."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"bf": "3", "g": "12", "preset": "fast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clips_eval_frames_equal_the_full_decode(videos_dir, name, caplog):
    path = videos_dir / name
    full = load_video(path, frame_transform=RESIZE, with_audio=False).frames
    with caplog.at_level(logging.INFO, logger="absl"):
        source = VideoSource(path, frame_transform=RESIZE)
    assert (source.num_frames, source.fps) == (len(full), pytest.approx(REAL_CLIPS[name][3]))
    # Matroska gives no frame count: a counted demux pass, said in a log line.
    assert source.info.counted == name.endswith(".mkv") == ("counted" in caplog.text)
    clips = eval_clip_indices(len(full), 8, 4, 4)
    np.testing.assert_array_equal(source.gather(clips), full[clips])
    assert source.decoded == len(np.unique(clips))  # only the sampled frames
    tail = np.arange(len(full) - 3, len(full))
    np.testing.assert_array_equal(source.gather(tail), full[tail])


def test_out_of_order_avi_every_frame_alone_and_in_runs(tmp_path):
    path = write_b_frame_avi(tmp_path / "b_frames.avi", moving_frames(96))
    full = read_video(path, with_audio=False).frames
    info = probe_video(path)
    assert info.num_frames == 96 and info.first_time == pytest.approx(0.04)  # AVI: first frame at one tick
    # Single frames are where a reordering decoder bites: a frame handed out after a later one must not be lost.
    for i in range(96):
        np.testing.assert_array_equal(read_frames_at(path, [i], info=info)[i], full[i])
    runs = np.r_[3:9, 40:41, 60:90:3, 95]
    got = read_frames_at(path, runs, info=info)
    assert sorted(got) == sorted(set(runs.tolist()))
    for i in runs:
        np.testing.assert_array_equal(got[int(i)], full[i])
    with pytest.raises(DataError, match=r"b_frames\.avi.*outside its 96 frames"):
        read_frames_at(path, [96], info=info)


@pytest.mark.parametrize("name", ["eye_makeup_audio__mmaction2_test.avi", "flipping_pancake__decord.mkv"])
def test_audio_spans_equal_the_whole_track_resampled(videos_dir, name):
    """MP3 in AVI (first frame at 0.04 s) and Opus in Matroska (1 ms timestamps, trimmed frames after a seek)."""
    path = videos_dir / name
    full = read_video(path, audio_sample_rate=16000)
    info = probe_video(path)
    assert info.audio_span == (pytest.approx(full.audio_span[0], abs=0.01),
                               pytest.approx(full.audio_span[1], abs=0.01))
    n = len(full.audio)
    for start in (0, 3000, 16000, 41234, n - 2000):
        got = read_audio_span(path, start, 4000, 16000, info=info)
        want = np.zeros(4000, np.float32)
        want[:min(4000, n - start)] = full.audio[start:start + 4000]
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"span from sample {start}")
    assert not read_audio_span(path, n + 10, 100, 16000, info=info).any()  # past the frames: padding


def test_frames_directory_reads_only_the_needed_files(tmp_path):
    frames = moving_frames(30, 40, 48)
    folder = write_frames_dir(tmp_path / "frames", frames, pattern="img_{:03d}.png")
    (folder / "img_030.png").write_bytes(b"not an image")  # the last frame: never sampled below
    source = VideoSource(folder)
    assert source.num_frames == 30 and source.fps == 30.0
    np.testing.assert_array_equal(source.gather([[2, 4], [10, 12]]), frames[[[2, 4], [10, 12]]])
    with pytest.raises(DataError, match="img_030.png"):
        source.gather([29])
