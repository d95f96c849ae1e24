"""Temporal localization on untrimmed videos from real footage: the UnLoc-style localizer vs sliding windows.

Untrimmed videos (`mtv.data.untrimmed.untrimmed_set`): one source video's frames in order with the camera
motion (13 classes: static, pans, tilts, zooms at two speeds) changing at random times, segments of 2-8 s.
Training videos come only from the training footage; held-out videos only from the held-out clip
(flipping_pancake), never used in training.

Both models use the same backbone, the same initialisation, the same optimizer recipe and the same number
of steps over the same number of windows per step. From scratch (default): the tiny two-view camera-motion
MTV (configs/localization/camera_motion_localization_tiny.py, 8-frame windows of 32x32 at 8 fps), randomly
initialised. `--init_from=camera-motion`: the embedded camera-motion MTV's architecture
(configs/localization/camera_motion_localization_pretrained.py, 16-frame windows of 64x64 at 8 fps), both
backbones initialised from the embedded preset by `init_from` (UnLoc's setup; the heads start random):

- localizer: `mtv.long.train_localization.train_localizer` (what `mtv train` runs for this config);
- baseline: the backbone as a window classifier (`mtv.long.baseline`), windows labelled by the segment at
  their centre; at test time each window's arg-max class, adjacent equal windows merged, score = mean
  probability.

Both are scored by `mtv.eval.localization_metrics.mean_average_precision` (mAP at tIoU 0.3, 0.5, 0.7 and
their mean) on the same held-out videos.

  python benchmarks/localization.py --videos=/work/shared/data/videos            # the README's numbers
  python benchmarks/localization.py --videos=... --init_from=camera-motion --seed=0    # pretrained backbones
  python benchmarks/localization.py --videos=... --steps=2 --train_videos=2 --eval_videos=1 --seconds=16

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "localization" / "camera_motion_localization_tiny.py"
PRETRAINED_CONFIG = REPO / "configs" / "localization" / "camera_motion_localization_pretrained.py"
KEYS = ("mAP@0.3", "mAP@0.5", "mAP@0.7", "mAP")


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", required=True, help="folder of the real clips (shared/data/videos)")
    p.add_argument("--workdir", default=None, help="where the localizer run goes (default: a temporary folder)")
    p.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    p.add_argument("--batch", type=int, default=4, help="sequences per localizer step")
    p.add_argument("--windows", type=int, default=None, help="windows per sequence (baseline: batch x windows "
                   "windows per step; default: the config's, 16 from scratch, 8 pretrained)")
    p.add_argument("--train_videos", type=int, default=48)
    p.add_argument("--eval_videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=32.0, help="length of each untrimmed video")
    p.add_argument("--lr", type=float, default=0.02, help="base learning rate of both models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--focal_gamma", type=float, default=None, help="the localizer's focal-loss gamma (default: "
                   "the config's, 2; 0 with --focal_alpha=0.5 is plain sigmoid cross-entropy / 2)")
    p.add_argument("--focal_alpha", type=float, default=None, help="the localizer's focal-loss alpha (default 0.25)")
    p.add_argument("--init_from", default="", help="'' (default): both backbones from scratch (the tiny config); "
                   "else an MTV of the embedded model's architecture (e.g. camera-motion, the embedded preset, or "
                   "its folder) that initialises both backbones (configs/localization/"
                   "camera_motion_localization_pretrained.py)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Runs the benchmark and prints its JSON line."""
    args = parse_args(argv)
    from mtv.data.synthetic import CLASSES
    from mtv.data.untrimmed import untrimmed_set
    from mtv.io.configs import load_config
    from mtv.long.baseline import evaluate_baseline, train_window_classifier
    from mtv.long.datasets import UntrimmedData
    from mtv.long.inference import Localizer, evaluate_localizer
    from mtv.long.train_localization import train_localizer

    config_path = PRETRAINED_CONFIG if args.init_from else CONFIG
    config = load_config(str(config_path))
    if args.init_from:
        config.init_from.checkpoint_path = args.init_from
    config.num_training_steps = args.steps
    config.checkpoint_steps = args.steps
    config.batch_size = args.batch
    config.rng_seed = args.seed
    config.lr_configs.base_learning_rate = args.lr
    config.lr_configs.steps_per_cycle = args.steps
    config.lr_configs.warmup_steps = min(50, max(args.steps // 10, 1))
    for field in ("focal_gamma", "focal_alpha"):
        if getattr(args, field) is not None:
            config.model.localization[field] = getattr(args, field)
    if args.windows:
        config.model.localization.windows_per_sequence = args.windows
    windows = int(config.model.localization.windows_per_sequence)
    u = config.dataset_configs.synthetic.untrimmed
    common = dict(seconds=args.seconds, fps=u.fps, size=u.size, min_segment_seconds=u.min_segment_seconds,
                  max_segment_seconds=u.max_segment_seconds,
                  source_min_resize=int(config.dataset_configs.synthetic.source_min_resize))
    began = time.perf_counter()
    train = untrimmed_set(args.videos, count=args.train_videos, split="train", seed=args.seed, **common)
    heldout = untrimmed_set(args.videos, count=args.eval_videos, split="heldout", seed=args.seed + 1, **common)
    data = UntrimmedData(train, heldout, list(CLASSES), held_out="held-out footage")
    render_s = time.perf_counter() - began

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp) / "localizer"
        began = time.perf_counter()
        run = train_localizer(config, workdir, data=data)
        localizer_train_s = time.perf_counter() - began
        info = json.loads((workdir / "localizer.json").read_text())
        began = time.perf_counter()
        loc = evaluate_localizer(Localizer(run.model, config, info), heldout)
        localizer_eval_s = time.perf_counter() - began

    began = time.perf_counter()
    classifier = train_window_classifier(config, train, CLASSES, steps=args.steps, batch=args.batch * windows,
                                         seed=args.seed)
    baseline_train_s = time.perf_counter() - began
    began = time.perf_counter()
    base = evaluate_baseline(classifier, heldout, CLASSES, int(info["window_frames"]))
    baseline_eval_s = time.perf_counter() - began

    segments = [len(v.segments) for v in heldout]
    report = {
        "localizer": {**{k: round(loc[k], 4) for k in KEYS}, "detections": loc["detections"],
                      "final_loss": round(run.history[-1]["loss"], 4) if run.history else None,
                      "train_seconds": round(localizer_train_s, 1), "eval_seconds": round(localizer_eval_s, 1)},
        "sliding_window_baseline": {**{k: round(base[k], 4) for k in KEYS}, "detections": base["detections"],
                                    "train_seconds": round(baseline_train_s, 1),
                                    "eval_seconds": round(baseline_eval_s, 1)},
        "setup": {"config": str(config_path.relative_to(REPO)), "init_from": args.init_from or None,
                  "steps": args.steps, "windows_per_step": args.batch * windows, "lr": args.lr,
                  "focal_gamma": config.model.localization.focal_gamma,
                  "focal_alpha": config.model.localization.focal_alpha,
                  "train_videos": args.train_videos, "eval_videos": args.eval_videos, "seconds": args.seconds,
                  "heldout_segments": sum(segments), "classes": len(CLASSES), "render_seconds": round(render_s, 1),
                  "seed": args.seed, "cpu_count": os.cpu_count()},
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
