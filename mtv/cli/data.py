"""`mtv data prepare CSV --out DIR`: videos + labels -> sharded TFRecords for training and evaluation."""

from __future__ import annotations

import sys

from absl import flags

FLAGS = flags.FlagValues()
HELP = "Prepare data: `mtv data prepare CSV --out DIR` writes sharded TFRecords from a CSV of videos."

flags.DEFINE_string("out", None, "Output directory for the TFRecord shards.", flag_values=FLAGS)
flags.DEFINE_integer("shards", 1, "Number of output shards.", flag_values=FLAGS)
flags.DEFINE_string("video_root", None, "Folder the CSV's paths / Epic video_ids are relative to "
                    "(default: the CSV's folder).", flag_values=FLAGS)
flags.DEFINE_string("name", None, "Shard name prefix (default: the CSV's file name).", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "Number of classes: labels must lie in [0, N).", flag_values=FLAGS)
flags.DEFINE_string("classes", None, "Class-list file (one name per line): labels must lie in [0, lines) "
                    "(instead of --num_classes).", flag_values=FLAGS)
flags.DEFINE_string("config", None, "Experiment config whose dataset_configs.num_classes bounds the labels "
                    "(instead of --num_classes).", flag_values=FLAGS)
flags.DEFINE_integer("min_resize", 256, "Store frames with their smaller side shrunk to this (0: keep size).",
                     flag_values=FLAGS)
flags.DEFINE_integer("max_frames", None, "Keep at most this many frames per video.", flag_values=FLAGS)
flags.DEFINE_float("frames_fps", 30.0, "Frame rate of frame directories (Epic's released frames: 60 for "
                   "EPIC-55 videos, 50 for EPIC-100's); turns timestamps into frame numbers there.",
                   flag_values=FLAGS)
flags.DEFINE_bool("audio", False, "Also store the audio of each segment's time span (mono, 16 kHz); a segment "
                  "without it is skipped and counted.", flag_values=FLAGS)
flags.DEFINE_bool("flow", False, "Also store optical flow (Epic flow_frames, else Farneback).", flag_values=FLAGS)
flags.DEFINE_enum("flow_source", "auto", ["auto", "epic", "compute"], "Flow from Epic's <root>/<P>/flow_frames "
                  "where a video has it, else computed (auto); only Epic's, skipping segments without it (epic); "
                  "always computed (compute).", flag_values=FLAGS)
flags.DEFINE_integer("flow_stride", None, "RGB frames per Epic flow frame (default from the video id: 2 for "
                     "EPIC-55's PXX_YY, 1 for EPIC-100's PXX_1YY).", flag_values=FLAGS)
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames.", flag_values=FLAGS)

SKIP_TITLES = {"video": "unreadable video(s)", "audio": "segment(s) without their audio",
               "flow": "segment(s) without their flow frames"}
USAGE = "usage: mtv data prepare CSV --out DIR [--shards N] [--video_root DIR] [--name NAME] [--num_classes N]"


def main(argv: list[str]) -> int:
    """Runs `mtv data SUBCOMMAND ...`."""
    args = argv[1:]
    if not args or args[0] != "prepare":
        got = f" (got '{args[0]}')" if args else ""
        print(f"mtv data: the only subcommand is 'prepare'{got}\n{USAGE}", file=sys.stderr)
        return 2
    if len(args) != 2:
        print(f"mtv data prepare: expected exactly one CSV file, got {len(args) - 1}\n{USAGE}", file=sys.stderr)
        return 2
    if not FLAGS.out:
        print(f"mtv data prepare: --out is required\n{USAGE}", file=sys.stderr)
        return 2
    from mtv.data.prepare import infer_num_classes, prepare  # heavy imports (TensorFlow) only when needed

    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = infer_num_classes(config=FLAGS.config, class_list=FLAGS.classes)
    result = prepare(
        args[1], FLAGS.out, num_shards=FLAGS.shards, video_root=FLAGS.video_root,
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
