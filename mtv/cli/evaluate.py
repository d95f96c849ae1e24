"""`mtv evaluate --data=PATTERN (--checkpoint=... --config=... | --model=HANDLE) --out=results.npz`.

MTV and M&M alike: an M&M model's views read every stream it takes from the records (flow and audio for the
same clips as the RGB views); `--missing_modality=audio` scores the model with that stream missing.

A localizer's workdir (`mtv train` on configs/localization/...) is scored by temporal localization instead:
mAP at tIoU 0.3, 0.5, 0.7 and their mean, printed as JSON, on `--data` (an annotation CSV with its videos
beside it) or else on the run's held-out untrimmed videos; `--out` then writes that JSON.
"""

from __future__ import annotations

from absl import flags

from mtv.cli.config_flags import ConfigFlagValues
from mtv.eval.evaluate import VIEW_RULES

HELP = "multi-view evaluation (clips x crops) of a checkpoint or zoo model; prints top-1/top-5, writes scores"
FLAGS = ConfigFlagValues()
FLAGS.define_config_file("config", None, "experiment config (model and test-time preprocessing)", lock_config=False)
flags.DEFINE_string("checkpoint", None, "training checkpoint, run workdir, preset dir or Scenic checkpoint",
                    flag_values=FLAGS)
flags.DEFINE_string("model", None, "zoo name, preset dir or hub handle (instead of --checkpoint)", flag_values=FLAGS)
flags.DEFINE_string("data", None, "TFRecords (glob, directory or prefix@N) or a CSV of videos", flag_values=FLAGS)
flags.DEFINE_string("out", None, "results file (.npz) of per-example scores keyed by id", flag_values=FLAGS)
flags.DEFINE_enum("rule", "logits_mean", list(VIEW_RULES), "how the views of a video are averaged",
                  flag_values=FLAGS)
flags.DEFINE_integer("clips", None, "temporal clips per video (default: the config's num_test_clips)",
                     flag_values=FLAGS)
flags.DEFINE_integer("crops", None, "spatial crops per clip, 1 or 3 (default: the config's)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "views per forward pass", flag_values=FLAGS)
flags.DEFINE_integer("label_offset", 0, "subtracted from stored labels (1 for 1-based label files)",
                     flag_values=FLAGS)
flags.DEFINE_list("missing_modality", [], "M&M: streams (flow, audio, rgb) to evaluate as missing: not read, and "
                  "fed as mtv.models.missing.missing_input zeros (what modality dropout trains with)",
                  flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.errors import ConfigError
    from mtv.eval import evaluate as ev

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    from mtv.long.inference import is_localizer_run

    if is_localizer_run(FLAGS.checkpoint or FLAGS.model):  # a temporal localizer: mAP, not top-1
        return _evaluate_localizer(FLAGS.checkpoint or FLAGS.model)
    if not FLAGS.data:
        raise ConfigError("--data is required (TFRecords or a CSV of videos)")
    if bool(FLAGS.checkpoint) == bool(FLAGS.model):
        raise ConfigError("give exactly one of --checkpoint (with --config) and --model")
    # A run's recorded config gives its test-time views and stream settings, as --config would.
    config = FLAGS.config if FLAGS.config is not None else ev.run_config(FLAGS.checkpoint)
    model = ev.load_for_eval(config=config, checkpoint=FLAGS.checkpoint, model=FLAGS.model)
    if config is not None and not hasattr(config, "get"):
        from mtv.training.trainer import load_train_config

        config = load_train_config(config)
    dc = ev.eval_dataset_configs(config, model, clips=FLAGS.clips, crops=FLAGS.crops)
    result = ev.evaluate_data(model, FLAGS.data, dataset_configs=dc, rule=FLAGS.rule, batch_size=FLAGS.batch_size,
                              label_offset=FLAGS.label_offset, missing=FLAGS.missing_modality)
    print(ev.format_metrics(result))
    if FLAGS.out:
        path = ev.write(result, FLAGS.out)
        print(f"scores of {len(result.ids)} videos written to {path}")
    return 0


def _evaluate_localizer(run: str) -> int:
    import json

    from mtv.long.inference import evaluate_run
    from mtv.utils.fileio import atomic_write_text, writing

    summary = evaluate_run(run, FLAGS.data)
    text = json.dumps(summary, indent=1)
    print(text)
    if FLAGS.out:
        with writing(FLAGS.out):
            atomic_write_text(FLAGS.out, text + "\n")
    return 0
