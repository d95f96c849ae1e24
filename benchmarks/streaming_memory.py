"""Peak memory of streaming recognition against stream length: a 1-minute and a 30-minute stream of tiny clips.

Each length runs in its own process (peak RSS, `ru_maxrss`, is a per-process high-water mark): the tiny
camera-motion MTV (configs/camera_motion/camera_motion_tiny.py, 8 frames of 32x32) in a
`mtv.long.streaming.StreamingClassifier` with a K-token memory; clips of 1 s (8 frames at 8 fps) are
rendered one at a time from a procedural texture with a random camera motion and fed to the compiled
`step`, the memory carried from clip to clip. Nothing of past clips is kept but the memory.

  python3 benchmarks/streaming_memory.py                      # 1 and 30 minutes, K = 16
  python3 benchmarks/streaming_memory.py --minutes 1 5 30 --memory-size 32
  python3 benchmarks/streaming_memory.py --model mtv/embedded/camera-motion   # any mtv.load handle or config .py

Prints one JSON line: per length, the clips streamed, the memory (K tokens x D), the RSS after the first
10 clips and at the end, the peak RSS, and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the mtv of this checkout

from benchmarks import common  # noqa: E402

TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
FPS = 8


def _backbone(model: str, seed: int):
    """The backbone of a config .py (built from `seed`) or of anything `mtv.load` takes."""
    if str(model).endswith(".py"):
        from mtv.models.builder import build_model

        return build_model(str(model), seed=seed).backbone
    from mtv.io.loading import load

    loaded = load(model)
    return getattr(loaded, "backbone", loaded)


def stream(minutes: float, memory_size: int = 16, seed: int = 0, model: str | None = None) -> dict:
    """Streams `minutes` of clips (of the model's frames at FPS) through the compiled step; returns the measurements."""
    import numpy as np
    import tensorflow as tf

    from mtv.data.synthetic import CLASSES, render_clip, texture_sources
    from mtv.long.streaming import StreamingClassifier

    backbone = _backbone(model or str(TINY), seed)
    model = StreamingClassifier(backbone, num_classes=len(CLASSES), memory_size=memory_size)
    frames, size = backbone.input_shapes["rgb"][:2]
    step = tf.function(lambda m, w, x: model.step(m, w, x), jit_compile=False, reduce_retracing=True)
    source = texture_sources(1, seed=seed)[0]
    rng = np.random.default_rng(seed)
    memory, weights = model.empty_state(1)
    clips = int(round(minutes * 60 * FPS / frames))
    start, rss_warm = time.perf_counter(), None
    for i in range(clips):
        clip = render_clip(source, int(rng.integers(len(CLASSES))), num_frames=frames, size=size, rng=rng)
        x = tf.constant(clip[None].astype(np.float32) / 127.5 - 1.0)
        memory, weights, logits = step(memory, weights, x)
        if i == 9:
            logits.numpy()
            rss_warm = common.rss_mb()
    logits.numpy()
    return {"minutes": minutes, "clips": clips, "clip_seconds": frames / FPS, "memory_tokens": memory_size,
            "token_width": model.token_width,
            "tokens_absorbed": float(np.sum(weights)), "rss_after_10_clips_mb": round(rss_warm or 0.0, 1),
            "rss_end_mb": round(common.rss_mb(), 1), "peak_rss_mb": round(common.peak_rss_mb(), 1),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0])
    p.add_argument("--memory-size", type=int, default=16, help="K, the memory's tokens")
    p.add_argument("--model", default=str(TINY), help="config .py or mtv.load handle of the backbone")
    p.add_argument("--child", action="store_true", help="stream one length in this process (internal)")
    args = p.parse_args(argv)
    if args.child:
        record = stream(args.minutes[0], args.memory_size, model=args.model)
    else:
        runs = []
        for minutes in args.minutes:
            cmd = [sys.executable, __file__, "--child", "--minutes", str(minutes), "--memory-size",
                   str(args.memory_size), "--model", args.model]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        record = {"benchmark": "streaming_memory", "model": args.model, "fps": FPS, "runs": runs}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
