"""Streaming recognition, measured: accuracy after each of the first N clips of a stream, and memory against length.

The backbone is the embedded camera-motion MTV (16 frames of 64x64, frozen); a `StreamingClassifier` with a
K-token memory puts a `MemoryReadout` head on it, trained by `mtv.long.train_streaming.train_streaming_head`
on streams rendered from the training videos (`stream_set(split='train')`: S consecutive clips of one camera
motion from one real video). Held-out streams come from the held-out video only, footage that neither the
head nor the backbone was trained on. On the same held-out clips it reports, after clip s = 1..N:

  streaming_top1      the streaming classifier (memory of all clips so far -> head)
  clip_top1           the single-clip classifier (the backbone's own trained head) on clip s alone
  running_mean_top1   the single-clip classifier's softmax averaged over clips 1..s (what a user would try)

and, unless `--minutes` is empty, the memory table of benchmarks/streaming_memory.py for the same model and K
(each stream length in its own process: tokens absorbed, memory K x D, RSS, peak RSS).

  python benchmarks/streaming.py --videos ../shared/data/videos     # 2.5-5 minutes on 2 (shared) cores
  python benchmarks/streaming.py --save-head /tmp/head && \\
      mtv export mtv/embedded/camera-motion /tmp/streaming_sm --streaming=/tmp/head

Prints one JSON line.
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
MODEL = REPO / "mtv" / "embedded" / "camera-motion"
VIDEOS = REPO.parent / "shared" / "data" / "videos"


def _softmax(x):
    import numpy as np

    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def accuracy(args: argparse.Namespace) -> dict:
    """Trains the head on training streams and scores it and the baselines on held-out streams."""
    import numpy as np

    from mtv.data.sources import normalize_frames
    from mtv.io.loading import load
    from mtv.long import train_streaming as ts
    from mtv.long.streaming import StreamingClassifier

    classifier = load(args.model)
    model = StreamingClassifier(classifier.backbone, num_classes=classifier.spec["num_classes"],
                                memory_size=args.memory_size)
    frames, size = model.input_shapes["rgb"][:2]
    start = time.perf_counter()
    train_x, train_y = ts.stream_set(args.videos, split="train", count=args.train_streams, clips_per_stream=args.clips,
                                     num_frames=frames, size=size, seed=[args.seed, 0])
    test_x, test_y = ts.stream_set(args.videos, split="heldout", count=args.eval_streams, clips_per_stream=args.clips,
                                   num_frames=frames, size=size, seed=[args.seed, 1])
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    train_tokens, test_tokens = ts.clip_tokens(model, train_x), ts.clip_tokens(model, test_x)
    tokens_s = time.perf_counter() - start
    start = time.perf_counter()
    trained = ts.train_streaming_head(model, train_tokens, train_y, epochs=args.epochs, batch_size=args.batch,
                                      learning_rate=args.lr, seed=args.seed, loss_on=args.loss_on)
    train_s = time.perf_counter() - start

    memory, weights = ts.memory_states(model, test_tokens)
    streaming = ts.readout_logits(model, memory, weights)
    flat = normalize_frames(test_x.reshape((-1,) + test_x.shape[2:]))
    clip_logits = np.asarray(classifier.predict(flat, batch_size=64, verbose=0), np.float32)
    clip_logits = clip_logits.reshape(test_x.shape[:2] + clip_logits.shape[-1:])
    running = np.cumsum(_softmax(clip_logits), axis=1)
    if args.save_head:
        ts.save_streaming_head(model, args.save_head, backbone_handle=str(args.model),
                               class_names=ts.CLASSES, training=trained.settings)

    def rounded(values):
        return [round(v, 4) for v in values]

    return {"train": {"streams": args.train_streams, "clips_per_stream": args.clips, **trained.settings,
                      "initial_loss": round(trained.initial_loss, 4), "final_loss": round(trained.losses[-1], 4),
                      "train_top1_last_clip": round(ts.accuracy_per_clip(
                          ts.readout_logits(model, *ts.memory_states(model, train_tokens)), train_y)[-1], 4)},
            "heldout": {"streams": args.eval_streams, "video": "held-out footage only (flipping_pancake)",
                        "streaming_top1": rounded(ts.accuracy_per_clip(streaming, test_y)),
                        "clip_top1": rounded(ts.accuracy_per_clip(clip_logits, test_y)),
                        "running_mean_top1": rounded(ts.accuracy_per_clip(running, test_y))},
            "seconds": {"render": round(render_s, 1), "tokens": round(tokens_s, 1), "train_head": round(train_s, 1)}}


def memory_table(args: argparse.Namespace) -> dict:
    """benchmarks/streaming_memory.py on the same model and K, each length in its own process."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "streaming_memory.py"), "--model", str(args.model),
           "--memory-size", str(args.memory_size), "--minutes", *[str(m) for m in args.minutes]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"streaming_memory.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default=str(VIDEOS), help="folder of the real clips (../shared/data/videos)")
    p.add_argument("--model", default=str(MODEL), help="mtv.load handle of a trained classifier (its backbone)")
    p.add_argument("--memory-size", type=int, default=16, help="K, the memory's tokens")
    p.add_argument("--clips", type=int, default=8, help="N, clips per stream (accuracy after each)")
    p.add_argument("--train-streams", type=int, default=416, help="training streams (32 per class)")
    p.add_argument("--eval-streams", type=int, default=208, help="held-out streams (16 per class)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--loss-on", choices=("every", "last"), default="every")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, nargs="*", default=[1.0, 30.0], help="memory-table stream lengths")
    p.add_argument("--save-head", default=None, help="also save the trained head here (for mtv export --streaming)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    record = {"benchmark": "streaming", "model": str(args.model), "memory_size": args.memory_size,
              "clips": args.clips, **accuracy(args)}
    if args.minutes:
        record["memory"] = memory_table(args)
    record["total_seconds"] = round(time.perf_counter() - start, 1)
    record["cpu"] = f"{os.cpu_count()} cores (shared with other jobs: timings are noisy)"
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
