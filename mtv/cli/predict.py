"""`mtv predict [VIDEO]`: print the top-k labels of a video (without one, of the bundled sample clip).

Only the sampled clips are decoded, by seeking, so a long video costs what its views cost. An M&M model also
gets the video's optical flow and audio track (`mtv.eval.multimodal_inputs`); a video without a stream it needs
is refused, or with `--missing_modality=zeros` fed the missing-modality input.

`mtv predict VIDEO --timeline [--window_stride SECONDS] [--out PREFIX_OR_DIR]` labels every window (one clip of
the model) of the whole video instead: a top-k line per window, and a JSON, a CSV and a PNG plot of class
probability over time (`mtv.eval.timeline`).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from mtv.errors import DataError

HELP = "label a video file or frames directory (default: the bundled sample) with a zoo model"
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "zoo name, preset dir, .keras file or URL (default: the embedded model)",
                    flag_values=FLAGS)
flags.DEFINE_string("views", None, "test views CLIPSxCROPS, e.g. 4x3 (default: the model's; with --timeline, views "
                    "per window, default 1x1)", flag_values=FLAGS)
flags.DEFINE_integer("top", 5, "how many labels to print", flag_values=FLAGS)
flags.DEFINE_enum("rule", "logits_mean", ["logits_mean", "softmax_mean"],
                  "how views are averaged (Scenic: logits_mean)", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "print a machine-readable JSON result", flag_values=FLAGS)
flags.DEFINE_enum("missing_modality", "error", ["error", "zeros"],
                  "M&M models: when the video lacks a stream the model needs (no audio track), 'error' refuses it, "
                  "'zeros' feeds the missing-modality input (mtv.models.missing) and says so", flag_values=FLAGS)
flags.DEFINE_bool("timeline", False, "label every window of the video (one clip each) and write a JSON, a CSV and "
                  "a PNG of class probability over time", flag_values=FLAGS)
flags.DEFINE_float("window_stride", None, "--timeline: seconds between window starts (default: one window, so "
                   "windows tile the video)", flag_values=FLAGS)
flags.DEFINE_float("window", None, "--timeline: window length in seconds (default: one clip of the model, "
                   "num_frames x stride frames); longer windows hold several clips with --views CxK",
                   flag_values=FLAGS)
flags.DEFINE_string("out", None, "--timeline: output prefix (PREFIX.json/.csv/.png) or directory (default: "
                    "VIDEO_STEM.timeline.* in the current directory)", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.eval.prediction import predict

    if len(argv) > 2:
        raise DataError(f"give at most one video, got {len(argv) - 1}: "
                        "usage: mtv predict [VIDEO] [--model HANDLE] [--views 4x3] [--top 5] [--json] "
                        "[--missing_modality error|zeros] [--timeline [--window_stride S] [--out PREFIX]]")
    if not FLAGS.timeline and any(v is not None for v in (FLAGS.window_stride, FLAGS.window, FLAGS.out)):
        from mtv.errors import ConfigError

        raise ConfigError("--window_stride, --window and --out go with --timeline")
    if len(argv) == 2:
        video = argv[1]
    else:
        from mtv.data import sample_video

        video = str(sample_video())
        # stderr, so that --json output stays one JSON document
        print(f"no video given: labelling the bundled sample {video}", file=sys.stderr)
    if FLAGS.timeline:
        return _timeline(video)
    result = predict(video, model=FLAGS.model, views=FLAGS.views, top=FLAGS.top, rule=FLAGS.rule,
                     missing_modality=FLAGS.missing_modality)
    if FLAGS.json:
        print(json.dumps(result, indent=1))
        return 0
    inputs = f", inputs {'+'.join(result['inputs'])}" if result["inputs"] != ["rgb"] else ""
    print(f"{result['video']}  (model {result['model']}{inputs}, {result['views']} views, {result['rule']})")
    for note in result["notes"]:
        print(f"note: {note}")
    for head, rows in result["heads"].items():
        if len(result["heads"]) > 1:
            print(f"[{head}]")
        for row in rows:
            print(f"{row['label']}: {row['probability']:.4f}")
    return 0


def _timeline(video: str) -> int:
    from mtv.eval.timeline import format_window, timeline, write_timeline

    # --json keeps stdout one JSON document: the per-window lines go to stderr then.
    stream = sys.stderr if FLAGS.json else sys.stdout
    result = timeline(video, model=FLAGS.model, window_stride=FLAGS.window_stride, window=FLAGS.window,
                      views=FLAGS.views or "1x1", top=FLAGS.top, rule=FLAGS.rule,
                      missing_modality=FLAGS.missing_modality,
                      on_window=lambda entry: print(format_window(entry), file=stream, flush=True))
    paths = write_timeline(result, FLAGS.out)
    for note in result["notes"]:
        print(f"note: {note}", file=stream)
    print(f"{len(result['windows'])} windows of {result['window_seconds']:.3f} s every "
          f"{result['window_stride_seconds']:.3f} s (model {result['model']}, {result['views']} views each); wrote "
          + ", ".join(str(p) for p in paths.values()), file=stream)
    if FLAGS.json:
        print(json.dumps(result, indent=1))
    return 0
