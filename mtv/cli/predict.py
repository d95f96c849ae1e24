"""`mtv predict [VIDEO]`: print the top-k labels of a video (without one, of the bundled sample clip).

An M&M model also gets the video's optical flow and audio track (`mtv.eval.multimodal_inputs`); a video
without a stream it needs is refused, or with `--missing_modality=zeros` fed the missing-modality input.
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
flags.DEFINE_string("views", None, "test views CLIPSxCROPS, e.g. 4x3 (default: the model's)", flag_values=FLAGS)
flags.DEFINE_integer("top", 5, "how many labels to print", flag_values=FLAGS)
flags.DEFINE_enum("rule", "logits_mean", ["logits_mean", "softmax_mean"],
                  "how views are averaged (Scenic: logits_mean)", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "print a machine-readable JSON result", flag_values=FLAGS)
flags.DEFINE_enum("missing_modality", "error", ["error", "zeros"],
                  "M&M models: when the video lacks a stream the model needs (no audio track), 'error' refuses it, "
                  "'zeros' feeds the missing-modality input (mtv.models.missing) and says so", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.eval.prediction import predict

    if len(argv) > 2:
        raise DataError(f"give at most one video, got {len(argv) - 1}: "
                        "usage: mtv predict [VIDEO] [--model HANDLE] [--views 4x3] [--top 5] [--json] "
                        "[--missing_modality error|zeros]")
    if len(argv) == 2:
        video = argv[1]
    else:
        from mtv.data import sample_video

        video = str(sample_video())
        # stderr, so that --json output stays one JSON document
        print(f"no video given: labelling the bundled sample {video}", file=sys.stderr)
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
