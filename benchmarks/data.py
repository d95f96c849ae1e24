"""Decoded + augmented training clips per second from the real test videos (run by hand).

    python benchmarks/data.py [--videos DIR] [--seconds 20] [--num-frames 32] [--stride 2]

Decodes every video once with PyAV (timed), then for `--seconds` samples random clips and runs Scenic's
training augmentation chain on them (resize 256, scale jitter, random 224 crop, flip, colour
augmentation). Prints one JSON line: decoding speed, augmented clips per second, decoded + augmented
clips per second (one whole-video decode per clip), and the per-core rates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mtv.data.config import data_config  # noqa: E402
from mtv.data.sampling import train_clip_indices  # noqa: E402
from mtv.data.transforms import train_transform  # noqa: E402
from mtv.data.video import read_video  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm"}


def main() -> None:
    """Runs the benchmark and prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=SHARED)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--stride", type=int, default=2)
    args = parser.parse_args()
    paths = sorted(p for p in args.videos.iterdir() if p.suffix in VIDEO_SUFFIXES)
    config = data_config({"num_frames": args.num_frames, "stride": args.stride, "augmentation_params": {
        "do_jitter_scale": True, "scale_min_factor": 0.9, "scale_max_factor": 1.33, "prob_scale_jitter": 1.0,
        "do_color_augment": True, "prob_color_augment": 0.8, "prob_color_drop": 0.1}})
    augment = tf.function(lambda frames, seed: train_transform(frames, config, seed), reduce_retracing=True)

    start = time.perf_counter()
    videos = [read_video(p) for p in paths]
    decode_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    augment(tf.constant(videos[0].frames[:args.num_frames]), tf.constant([0, 0]))  # trace once

    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        video = videos[clips % len(videos)]
        indices = train_clip_indices(video.num_frames, args.num_frames, args.stride, rng)
        augment(tf.constant(video.frames[indices]), tf.constant([clips, 1])).numpy()
        clips += 1
    augment_s = time.perf_counter() - start
    cores = os.cpu_count() or 1
    total_frames = sum(v.num_frames for v in videos)
    print(json.dumps({
        "benchmark": "data", "videos": len(videos), "decode_frames_per_s": round(total_frames / decode_s, 1),
        "decode_videos_per_s": round(len(videos) / decode_s, 2), "num_frames": args.num_frames,
        "stride": args.stride, "clips_per_s": round(clips / augment_s, 2),
        "decoded_clips_per_s": round(1.0 / (augment_s / clips + decode_s / len(videos)), 2),
        "cores": cores, "clips_per_s_per_core": round(clips / augment_s / cores, 2),
        "decoded_clips_per_s_per_core": round(1.0 / (augment_s / clips + decode_s / len(videos)) / cores, 2)}))


if __name__ == "__main__":
    main()
