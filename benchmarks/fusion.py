"""Does fusion work? RGB-only vs audio-only vs RGB+audio M&M on a task whose label needs both streams.

The task (`mtv.data.synthetic_av`): camera motion rendered from real footage (3 motions) x a sound mixed into
a real recording (3 sounds) = 9 classes. Frames alone can only tell the motion, sound alone only the sound, so
the best a single-stream model can do is 1/3 of the classes it cannot see: top-1 <= 33 % if it is perfect on its
own half. Held-out test clips are rendered from a video (and mixed into its recording) that training never uses.

All three models are trained the same way: the same records, steps, batch, schedule and seed, and the
learning rate picked for each from the same grid by top-1 on a validation split (training footage, other
clips); the test split is scored once, with the picked rate. Run by hand (about 10 minutes on 2 CPU cores):

  python benchmarks/fusion.py --videos ../shared/data/videos --workdir /tmp/fusion

It prints one JSON line: per model, the validation top-1 of every rate, the picked rate, and test top-1 with
its motion and sound parts (top-1 of the motion / sound the predicted class implies).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

flags.DEFINE_string("videos", None, "Folder of the real clips (../shared/data/videos).", required=True)
flags.DEFINE_string("workdir", "/tmp/mtv_fusion", "Where records and runs go.")
flags.DEFINE_integer("steps", 800, "Training steps of every run.")
flags.DEFINE_integer("batch", 32, "Batch size of every run.")
flags.DEFINE_list("lrs", ["0.01", "0.03", "0.1"], "Learning-rate grid, the same for every model.")
flags.DEFINE_list("models", ["rgb", "audio", "rgb+audio"], "Stream sets to train.")
flags.DEFINE_integer("num_train", 2400, "Training examples.")
flags.DEFINE_integer("num_eval", 270, "Validation and test examples (each).")
FLAGS = flags.FLAGS

NUM_FRAMES, SIZE, FPS = 8, 32, 25.0
AUDIO = {"num_frames": 32, "num_mel_bins": 16}


def _view(width: int, heads: int, patch: tuple) -> dict:
    return {"hidden_size": width, "num_heads": heads, "mlp_dim": 2 * width, "num_layers": 2,
            "patches": {"size": list(patch)}}


def make_records(root: Path) -> None:
    """Train / validation (training footage) and test (held-out footage) records, made once."""
    from mtv.data import synthetic_av

    for name, count, split, seed in (("train", FLAGS.num_train, "train", 0), ("validation", FLAGS.num_eval, "train", 1),
                                     ("test", FLAGS.num_eval, "heldout", 2)):
        if not list(root.glob(f"{name}-*.tfrecord")):
            synthetic_av.write_records(root, name, count, videos=FLAGS.videos, split=split, num_frames=NUM_FRAMES,
                                       size=SIZE, seed=seed, fps=FPS)


def make_config(streams: list[str], lr: float, records: Path):
    """The one recipe; only the model's streams and the learning rate differ between runs."""
    import ml_collections

    from mtv.data import synthetic_av

    c = ml_collections.ConfigDict()
    c.experiment_name = f"fusion_{'+'.join(streams)}_lr{lr}"
    c.dataset_name = "video_tfrecord_dataset"
    c.dataset_configs = ml_collections.ConfigDict({
        "base_dir": str(records), "tables": {"train": "train-*.tfrecord", "validation": "validation-*.tfrecord"},
        "num_classes": len(synthetic_av.CLASSES), "num_frames": NUM_FRAMES, "stride": 1, "min_resize": SIZE,
        "crop_size": SIZE, "num_test_clips": 1, "do_three_spatial_crops": False, "zero_centering": True,
        "random_flip": False,  # a flip turns pan_right into pan_left, which is not a class here
        "audio": dict(AUDIO), "shuffle_buffer_size": 512})
    model = {"classifier": "token", "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "stochastic_depth": 0.0,
             "modalities": {},
             "global_encoder_config": {"num_heads": 4, "mlp_dim": 64, "num_layers": 1, "hidden_size": 40,
                                       "merge_axis": "channel"},
             "temporal_encoding_config": {"kernel_init_method": "central_frame_initializer", "method": "3d_conv"}}
    if "rgb" in streams:
        model["view_configs"] = [_view(32, 2, (8, 8, 4)), _view(32, 2, (8, 8, 2))]
        model["modalities"]["rgb"] = {"channels": 3}
    if "audio" in streams:
        model["modalities"]["audio"] = {"view_configs": [_view(32, 2, (8, 4))], "channels": 1,
                                        "num_frames": AUDIO["num_frames"], "mel_bins": AUDIO["num_mel_bins"]}
    views = len(model.get("view_configs", [])) + ("audio" in streams)
    model["cross_view_fusion"] = ({"type": "cross_view_attention", "fuse_in_descending_order": True,
                                   "use_query_config": True, "fusion_layers": [1]} if views > 1 else None)
    c.model = ml_collections.ConfigDict(model)
    c.optimizer = "momentum"
    c.optimizer_configs = ml_collections.ConfigDict({"momentum": 0.9})
    c.l2_decay_factor = 0.0
    c.max_grad_norm = 1.0
    c.label_smoothing = None
    c.num_training_steps = FLAGS.steps
    c.batch_size = FLAGS.batch
    c.rng_seed = 0
    c.lr_configs = ml_collections.ConfigDict({
        "learning_rate_schedule": "compound", "factors": "constant * cosine_decay * linear_warmup",
        "warmup_steps": max(FLAGS.steps // 8, 1), "steps_per_cycle": FLAGS.steps, "base_learning_rate": lr})
    c.checkpoint_steps = FLAGS.steps
    c.log_eval_steps = FLAGS.steps
    c.mixed_precision = "float32"
    return c


def parts(result) -> dict:
    """Test top-1, and top-1 of the motion and of the sound that the predicted class implies."""
    import numpy as np

    from mtv.data import synthetic_av

    head = next(iter(result.outputs))
    labels = np.asarray(result.labels[head])
    pred, true = np.argmax(result.outputs[head], -1), labels.argmax(-1) if labels.ndim == 2 else labels
    motion = lambda y: y // len(synthetic_av.SOUNDS)  # noqa: E731
    sound = lambda y: y % len(synthetic_av.SOUNDS)  # noqa: E731
    return {"top1": float(np.mean(pred == true)), "motion_top1": float(np.mean(motion(pred) == motion(true))),
            "sound_top1": float(np.mean(sound(pred) == sound(true))), "count": int(true.size)}


def main(argv) -> None:
    del argv
    from mtv.eval.evaluate import evaluate_data
    from mtv.training.trainer import train

    root = Path(FLAGS.workdir)
    records = root / "records"
    make_records(records)
    report = {}
    for name in FLAGS.models:
        streams = name.split("+")
        runs = {}
        for lr in map(float, FLAGS.lrs):
            start = time.time()
            workdir = root / f"{name}_lr{lr}"
            result = train(make_config(streams, lr, records), workdir)
            runs[lr] = {"val_top1": float(result.eval["accuracy"]) / 100.0,
                        "seconds": round(time.time() - start, 1), "model": result.model}
            print(f"{name} lr={lr}: validation {runs[lr]['val_top1']:.3f} ({runs[lr]['seconds']} s)", file=sys.stderr)
        best = max(runs, key=lambda lr: runs[lr]["val_top1"])
        dc = make_config(streams, best, records).dataset_configs.to_dict()
        test = evaluate_data(runs[best]["model"], str(records / "test-*.tfrecord"), dataset_configs=dc)
        report[name] = {"val_top1_by_lr": {str(lr): r["val_top1"] for lr, r in runs.items()}, "picked_lr": best,
                        "test": parts(test), "seconds_per_run": [r["seconds"] for r in runs.values()]}
    report["setup"] = {"steps": FLAGS.steps, "batch": FLAGS.batch, "train": FLAGS.num_train,
                       "val": FLAGS.num_eval, "test": FLAGS.num_eval, "cpu": os.cpu_count()}
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
