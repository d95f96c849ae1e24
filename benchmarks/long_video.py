"""`mtv predict` on long 720p videos: wall time and memory against video length (seek-based decoding).

Generates (once, cached) a 1-minute and a 10-minute 1280x720 30 fps H.264 video with PyAV: a textured scene
panning and drifting, a keyframe every 2 s, encoded with x264's ultrafast preset (cheap to write, ordinary to
read). Each video is then labelled in a fresh process by the embedded default model (mtv/embedded/camera-motion)
through `mtv.eval.prediction.predict`, the `mtv predict` path, with 4x3 views; the process reports the wall time
of `predict`, its RSS after loading the model and its peak RSS (`ru_maxrss`, a per-process high-water mark), so
`peak_beyond_model_mb` is what labelling the video cost in memory on top of the loaded model.

  python3 benchmarks/long_video.py                         # 1 and 10 minutes, 4x3 views
  python3 benchmarks/long_video.py --minutes 1 10 30 --views 4x3
  python3 benchmarks/long_video.py --seconds 3 6 --width 320 --height 240   # a quick check (the test's)
  python3 benchmarks/long_video.py --compare-full          # also time today's alternative: decode everything

Prints one JSON line: per video, its length, frames, file size, `predict`'s seconds, frames decoded, RSS after
the model, peak RSS and the difference; with --compare-full, the same for a full decode + sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the mtv of this checkout

from benchmarks import common  # noqa: E402

DEFAULT_MODEL = REPO / "mtv" / "embedded" / "camera-motion"


def _texture(height: int, width: int):
    """A smooth colour texture twice as wide as the frame (panned across) with sharp detail: uint8 [H, 2W, 3]."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    small = rng.uniform(0, 255, (height // 8 + 1, width // 4 + 1, 3)).astype(np.float32)
    base = cv2.resize(small, (2 * width, height), interpolation=cv2.INTER_CUBIC)
    detail = rng.uniform(-40, 40, (height, 2 * width, 1)).astype(np.float32)
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def generate(path: Path, seconds: float, width: int, height: int, fps: int, gop_seconds: float) -> Path:
    """Writes the benchmark video at `path` atomically (a finished file or none); reuses an existing one."""
    import math

    import av
    import numpy as np

    from mtv.utils.fileio import atomic_path

    if path.is_file():
        return path
    texture = _texture(height, width)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            gop = max(int(round(gop_seconds * fps)), 1)
            stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "crf": "28"}
            for i in range(int(round(seconds * fps))):
                x = (6 * i) % width  # pans right 6 px a frame, wrapping around the doubled texture
                y = int(round(height * 0.05 * (1 + math.sin(i / fps))))  # and drifts up and down
                image = np.pad(texture[:height - y, x:x + width], ((y, 0), (0, 0), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def child(args) -> dict:
    """In this process: load the model, label the video once, report time and memory."""
    import numpy as np

    from mtv.io.loading import load

    model = load(args.model)
    rss_model = common.rss_mb()
    out = {"video": args.video, "rss_after_model_mb": round(rss_model, 1)}
    if args.full:
        from mtv.data.preprocessor import VideoPreprocessor
        from mtv.data.transforms import video_to_eval_views
        from mtv.data.video import load_video
        from mtv.eval.prediction import average_views, eval_config

        config = eval_config(model, args.views)
        start = time.perf_counter()
        video = load_video(args.video, frame_transform=VideoPreprocessor(config.crop_size, config.min_resize).resize,
                           with_audio=False)
        views = video_to_eval_views(video, num_frames=config.num_frames, stride=config.stride,
                                    num_clips=config.num_test_clips, crop_size=config.crop_size,
                                    min_resize=config.min_resize, three_crops=config.do_three_spatial_crops)
        probs = average_views(np.concatenate([np.asarray(model(views[i:i + 4])) for i in range(0, len(views), 4)]))
        out.update(seconds=round(time.perf_counter() - start, 2), num_frames=video.num_frames,
                   num_frames_decoded=video.num_frames, top1_index=int(np.argmax(probs)))
    else:
        from mtv.eval.prediction import predict

        start = time.perf_counter()
        result = predict(args.video, model=model, views=args.views, top=1)
        out.update(seconds=round(time.perf_counter() - start, 2), num_frames=result["num_frames"],
                   num_frames_decoded=result["num_frames_decoded"], top1=result["heads"]["logits"][0]["label"])
    peak = common.peak_rss_mb()
    out.update(peak_rss_mb=round(peak, 1), peak_beyond_model_mb=round(peak - rss_model, 1))
    return out


def _run_child(video: Path, args, *, full: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(video), "--model", str(args.model), "--views", args.views]
    cmd += ["--full"] if full else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed on {video} ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="lengths in seconds (instead of --minutes)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    p.add_argument("--views", default="4x3")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="any mtv.load handle (default: the embedded model)")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mtv_benchmarks", "long_video"))
    p.add_argument("--compare-full", action="store_true", help="also decode each whole video, today's alternative")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.video = args.child
        report = child(args)
        print(json.dumps(report))
        return report
    lengths = args.seconds if args.seconds else [m * 60 for m in args.minutes]
    cache = Path(args.cache_dir)
    report = {"setup": {"size": f"{args.width}x{args.height}", "fps": args.fps, "gop_seconds": args.gop,
                        "codec": "h264 (x264 ultrafast)", "views": args.views, "model": str(args.model),
                        "cpus": os.cpu_count()}, "videos": []}
    for seconds in lengths:
        name = f"pan_{seconds:g}s_{args.width}x{args.height}_{args.fps}fps_g{args.gop:g}.mp4"
        start = time.perf_counter()
        fresh = not (cache / name).is_file()
        video = generate(cache / name, seconds, args.width, args.height, args.fps, args.gop)
        row = {"seconds_of_video": seconds, "file_mb": round(video.stat().st_size / 2**20, 1),
               "generated_in_s": round(time.perf_counter() - start, 1) if fresh else "cached",
               "seek": _run_child(video, args, full=False)}
        if args.compare_full:
            row["full_decode"] = _run_child(video, args, full=True)
        report["videos"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
