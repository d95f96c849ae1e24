"""`mtv data prepare CSV --out DIR` and `mtv data bench RECORDS --config=CONFIG`.

prepare: videos + labels -> shuffled, sharded TFRecords for training and evaluation (`mtv.data.prepare`).
bench: times the dataset `mtv train` (`--split train`) or `mtv evaluate` (`--split eval`) reads from RECORDS on
one core and on all cores, and prints one JSON line (`mtv.data.bench`).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from mtv.cli.config_flags import ConfigFlagValues

FLAGS = ConfigFlagValues()
HELP = ("Prepare data (`mtv data prepare CSV --out DIR`: shuffled, sharded TFRecords from a CSV of videos) or time "
        "the input pipeline (`mtv data bench RECORDS --config=CONFIG`).")

FLAGS.define_config_file("config", None, "Experiment config (fields can be overridden, e.g. --config.batch_size=8). "
                         "prepare: its dataset_configs.num_classes bounds the labels (instead of --num_classes); "
                         "bench: the config whose training or evaluation dataset is timed.", lock_config=False)
flags.DEFINE_string("out", None, "prepare: output directory for the TFRecord shards.", flag_values=FLAGS)
flags.DEFINE_integer("num_shards", None, "prepare: number of output shards (default: one per video, at most 64: "
                     "enough files for parallel reads and for file sharding over up to 64 input workers).",
                     flag_values=FLAGS)
flags.DEFINE_integer("shards", None, "prepare: deprecated spelling of --num_shards (removed in the next "
                     "release).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "prepare: the rows are shuffled with this seed before they are dealt into the "
                     "shards, so a sorted CSV still gives mixed shards; the output depends only on (CSV, seed, "
                     "num_shards).", flag_values=FLAGS)
flags.DEFINE_bool("shuffle", True, "prepare: shuffle the rows (--noshuffle keeps the CSV's order).", flag_values=FLAGS)
flags.DEFINE_integer("num_workers", None, "prepare: processes that prepare videos (default: the CPU count, at most "
                     "one per 16 videos because each process loads TensorFlow); the output does not depend on it.",
                     flag_values=FLAGS)
flags.DEFINE_string("video_root", None, "prepare: folder the CSV's paths / Epic video_ids are relative to "
                    "(default: the CSV's folder).", flag_values=FLAGS)
flags.DEFINE_string("name", None, "prepare: shard name prefix (default: the CSV's file name).", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "prepare: number of classes: labels must lie in [0, N).", flag_values=FLAGS)
flags.DEFINE_string("classes", None, "prepare: class-list file (one name per line): labels must lie in [0, lines) "
                    "(instead of --num_classes).", flag_values=FLAGS)
flags.DEFINE_integer("min_resize", 256, "prepare: store frames with their smaller side shrunk to this (0: keep size).",
                     flag_values=FLAGS)
flags.DEFINE_integer("max_frames", None, "prepare: keep at most this many frames per video.", flag_values=FLAGS)
flags.DEFINE_float("frames_fps", 30.0, "prepare: frame rate of frame directories (Epic's released frames: 60 for "
                   "EPIC-55 videos, 50 for EPIC-100's); turns timestamps into frame numbers there.",
                   flag_values=FLAGS)
flags.DEFINE_bool("audio", False, "prepare: also store the audio of each segment's time span (mono, 16 kHz); a "
                  "segment without it is skipped and counted.", flag_values=FLAGS)
flags.DEFINE_bool("flow", False, "prepare: also store optical flow (Epic flow_frames, else Farneback).",
                  flag_values=FLAGS)
flags.DEFINE_enum("flow_source", "auto", ["auto", "epic", "compute"], "prepare: flow from Epic's "
                  "<root>/<P>/flow_frames where a video has it, else computed (auto); only Epic's, skipping segments "
                  "without it (epic); always computed (compute).", flag_values=FLAGS)
flags.DEFINE_integer("flow_stride", None, "prepare: RGB frames per Epic flow frame (default from the video id: 2 for "
                     "EPIC-55's PXX_YY, 1 for EPIC-100's PXX_1YY).", flag_values=FLAGS)
flags.DEFINE_integer("jpeg_quality", 90, "prepare: JPEG quality of the stored frames.", flag_values=FLAGS)
flags.DEFINE_enum("split", "train", ["train", "eval"], "bench: time the training dataset (`mtv train`) or the "
                  "multi-view evaluation dataset (`mtv evaluate`).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", None, "bench: batch size (default: config.batch_size for train, 8 for eval as "
                     "`mtv evaluate`).", flag_values=FLAGS)
flags.DEFINE_integer("batches", 10, "bench: timed batches per run.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "bench: batches read before timing starts (tracing, first reads, autotune).",
                     flag_values=FLAGS)

SKIP_TITLES = {"video": "unreadable video(s)", "audio": "segment(s) without their audio",
               "flow": "segment(s) without their flow frames"}
USAGE = ("usage: mtv data prepare CSV --out DIR [--num_shards N] [--seed S | --noshuffle] [--num_workers N] "
         "[--video_root DIR] [--name NAME] [--num_classes N]\n"
         "       mtv data bench RECORDS --config=CONFIG [--split train|eval] [--batch_size B] [--batches N]")
SUBCOMMANDS = ("prepare", "bench")


def main(argv: list[str]) -> int:
    """Runs `mtv data SUBCOMMAND ...`."""
    args = argv[1:]
    if not args or args[0] not in SUBCOMMANDS:
        got = f" (got '{args[0]}')" if args else ""
        print(f"mtv data: the subcommands are 'prepare' and 'bench'{got}\n{USAGE}", file=sys.stderr)
        return 2
    command = args[0]
    what = "CSV file" if command == "prepare" else "RECORDS pattern (glob, directory or prefix@N)"
    if len(args) != 2:
        print(f"mtv data {command}: expected exactly one {what}, got {len(args) - 1}\n{USAGE}", file=sys.stderr)
        return 2
    return _prepare(args[1]) if command == "prepare" else _bench(args[1])


def _bench(records: str) -> int:
    if FLAGS.config is None:
        print(f"mtv data bench: --config is required\n{USAGE}", file=sys.stderr)
        return 2
    from mtv.data.bench import bench

    report = bench(records, FLAGS.config, split=FLAGS.split, batch_size=FLAGS.batch_size, batches=FLAGS.batches,
                   warmup=FLAGS.warmup)
    print(json.dumps(report))
    return 0


def _prepare(csv_path: str) -> int:
    if not FLAGS.out:
        print(f"mtv data prepare: --out is required\n{USAGE}", file=sys.stderr)
        return 2
    from mtv.data.prepare import infer_num_classes, prepare  # heavy imports (TensorFlow) only when needed

    num_shards = FLAGS.num_shards
    if FLAGS.shards is not None:
        if num_shards is not None and num_shards != FLAGS.shards:
            print(f"mtv data prepare: --shards={FLAGS.shards} and --num_shards={num_shards} disagree; give "
                  "--num_shards only", file=sys.stderr)
            return 2
        print("mtv data prepare: warning: --shards is deprecated and will be removed in the next release; use "
              f"--num_shards={FLAGS.shards}", file=sys.stderr)
        num_shards = FLAGS.shards
    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = infer_num_classes(config=FLAGS.config, class_list=FLAGS.classes)
    result = prepare(
        csv_path, FLAGS.out, num_shards=num_shards, seed=FLAGS.seed if FLAGS.shuffle else None,
        num_workers=FLAGS.num_workers, video_root=FLAGS.video_root,
        name=FLAGS.name, num_classes=num_classes,
        min_resize=FLAGS.min_resize or None, max_frames=FLAGS.max_frames,
        frames_fps=FLAGS.frames_fps, with_audio=FLAGS.audio, with_flow=FLAGS.flow,
        jpeg_quality=FLAGS.jpeg_quality, flow_source=FLAGS.flow_source, flow_stride=FLAGS.flow_stride)
    print(f"wrote {result.num_written} examples to {len(result.shards)} shard(s): "
          f"{result.shards[0].parent}/{result.shards[0].name.split('-00000-of-')[0]}-*")
    if result.flow_sources:
        print("flow: " + ", ".join(f"{n} from {k}" for k, n in result.flow_sources.items()))
    for kind, count in result.skip_counts.items():
        if count:
            print(f"skipped {count} {SKIP_TITLES[kind]}:")
            for (video, reason), k in zip(result.skipped, result.skip_kinds, strict=True):
                if k == kind:
                    print(f"  {video}: {reason}")
    return 0
