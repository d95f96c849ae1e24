"""Untrimmed camera-motion videos from the real clips: segments, the video file and its annotation CSV."""

import numpy as np
import pytest

from mtv.data import untrimmed
from mtv.data.synthetic import CLASSES
from mtv.data.untrimmed import Segment, read_annotations, untrimmed_set, write_untrimmed
from mtv.errors import DataError

SETTINGS = dict(seconds=12.0, fps=8.0, size=32, min_segment_seconds=2.0, max_segment_seconds=4.0,
                source_min_resize=64)


@pytest.fixture(scope="module")
def heldout(videos_dir):
    return untrimmed_set(videos_dir, count=2, split="heldout", seed=3, **SETTINGS)


def test_segments_tile_the_video_with_changing_camera_motions(heldout, videos_dir):
    for video in heldout:
        assert video.frames.shape == (96, 32, 32, 3) and video.frames.dtype == np.uint8
        segs = video.segments
        assert segs[0].start == 0.0 and segs[-1].end == video.duration == 12.0
        assert all(a.end == b.start for a, b in zip(segs, segs[1:], strict=False))
        assert all(a.label != b.label for a, b in zip(segs, segs[1:], strict=False))
        assert all(s.label in CLASSES for s in segs)
        # 2-4 s each; a tail under 2 s joins the last segment (at most 4 + 2 s).
        assert all(2.0 <= s.end - s.start <= 4.0 for s in segs[:-1]) and 2.0 <= segs[-1].end - segs[-1].start < 6.0
    again = untrimmed_set(videos_dir, count=1, split="heldout", seed=3, **SETTINGS)[0]
    np.testing.assert_array_equal(again.frames, heldout[0].frames)


def test_the_heldout_set_renders_from_the_heldout_video_only(videos_dir, monkeypatch):
    splits = []
    real = untrimmed.video_sources

    def spy(videos, *, split, min_resize):
        splits.append(split)
        sources = real(videos, split=split, min_resize=min_resize)
        assert len(sources) == (1 if split == "heldout" else 4)  # flipping_pancake alone / the 4 others
        return sources

    monkeypatch.setattr(untrimmed, "video_sources", spy)
    untrimmed_set(videos_dir, count=1, split="heldout", **{**SETTINGS, "seconds": 2.0})
    assert splits == ["heldout"]


def test_written_video_and_csv_read_back(heldout, tmp_path):
    from mtv.data.video import read_video

    csv_path = write_untrimmed(heldout, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.csv", "untrimmed_heldout_000.avi",
                                                         "untrimmed_heldout_001.avi"]
    assert csv_path.read_text().splitlines()[0] == "video,start,end,label"
    decoded = read_video(tmp_path / "untrimmed_heldout_000.avi", with_audio=False)
    assert decoded.fps == 8.0 and decoded.frames.shape == heldout[0].frames.shape
    assert np.abs(decoded.frames.astype(int) - heldout[0].frames).mean() < 4  # near-lossless MJPEG
    back = read_annotations(csv_path)  # durations from the video files beside the CSV
    assert back == {f"{v.name}.avi": v.segments for v in heldout}


@pytest.mark.parametrize("row,message", [
    ("v.avi,3.0,3.0,static", r"annotations.csv:2 \(video 'v.avi'\): start 3 s >= end 3 s"),
    ("v.avi,8.0,12.5,static", r"annotations.csv:2 \(video 'v.avi'\): segment \[8, 12.5\] s lies outside the video "
                              r"\[0, 12\] s"),
    ("v.avi,0,2,dolly_zoom", r"unknown label 'dolly_zoom'; known labels: static, pan_left_slow"),
    ("v.avi,zero,2,static", r"annotations.csv:2: field 'start' is 'zero', not a number of seconds"),
    ("w.avi,0,2,static", r"video 'w.avi' not found beside the CSV"),
])
def test_bad_annotation_rows_are_named(tmp_path, row, message):
    path = tmp_path / "annotations.csv"
    path.write_text(f"video,start,end,label\n{row}\n")
    with pytest.raises(DataError, match=message):
        read_annotations(path, durations={"v.avi": 12.0})


def test_a_bad_header_is_named(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_text("video,begin,end,label\nv.avi,0,1,static\n")
    with pytest.raises(DataError, match="missing start"):
        read_annotations(path, durations={"v.avi": 12.0})


def test_nothing_is_written_for_bad_segments(heldout, tmp_path):
    bad = untrimmed.UntrimmedVideo("bad", heldout[0].frames, 8.0, [Segment(0.0, 13.0, "static")])
    with pytest.raises(DataError, match=r"video 'bad' segments\[0\]: segment \[0, 13\] s lies outside the video"):
        write_untrimmed([heldout[0], bad], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
