"""`mtv train --config=FILE --workdir=DIR`: fine-tune an MTV or M&M with Scenic's recipe (resumes a killed run).

An M&M config (`model.modalities`, e.g. configs/epic_kitchens/epic_mm_*.py) reads every stream from its records;
modality dropout is the config field `modality_dropout` (docs/multimodal.md, "Training and evaluation").
"""

from __future__ import annotations

from absl import flags

from mtv.cli.config_flags import ConfigFlagValues
from mtv.training.strategy import STRATEGIES

HELP = "train or fine-tune an MTV or M&M from a Scenic-style config (resumes from the workdir's last checkpoint)"
FLAGS = ConfigFlagValues()
FLAGS.define_config_file("config", None, "experiment config file (fields can be overridden, e.g. "
                         "--config.batch_size=4)", lock_config=False)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, tensorboard/", flag_values=FLAGS)
flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy ('multi_worker' reads "
                  "TF_CONFIG; 'tpu' needs --tpu)", flag_values=FLAGS)
flags.DEFINE_string("tpu", "", "TPU name or grpc:// address for --strategy=tpu", flag_values=FLAGS)
flags.DEFINE_integer("cpu_replicas", 0, "split the CPU into this many logical devices and mirror over them "
                     "(to try tf.distribute without accelerators)", flag_values=FLAGS)
flags.DEFINE_string("export_preset", None, "also save the trained model as a preset directory here",
                    flag_values=FLAGS)
flags.DEFINE_string("videos", None, "source videos of the generated camera-motion data", flag_values=FLAGS)
flags.DEFINE_bool("allow_config_change", False, "resume a workdir whose recorded config.json differs from --config "
                  "(the new config is recorded; without this flag such a resume is refused, listing the changes)",
                  flag_values=FLAGS)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line per interval)",
                     flag_values=FLAGS)


def main(argv: list[str]) -> int:
    import tensorflow as tf

    from mtv.errors import ConfigError
    from mtv.training.strategy import make_strategy

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; usage: mtv train --config=FILE --workdir=DIR")
    if FLAGS.config is None or not FLAGS.workdir:
        raise ConfigError("usage: mtv train --config=FILE --workdir=DIR [--strategy=...] [--config.FIELD=VALUE]")
    if FLAGS.cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(FLAGS.cpu_replicas)])
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(FLAGS.cpu_replicas)])
    else:
        strategy = make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    from mtv.training.trainer import train

    command = "mtv train " + " ".join(a for a in FLAGS.argv[1:] if not a.startswith("--verbose"))
    result = train(FLAGS.config, FLAGS.workdir, strategy=strategy, videos=FLAGS.videos,
                   export_preset=FLAGS.export_preset, preset_metadata={"retrain_command": command},
                   verbose=FLAGS.verbose, allow_config_change=FLAGS.allow_config_change)
    print(f"step {result.step}/{result.total_steps} (started at {result.start_step}); workdir {result.workdir}")
    for key, value in result.eval.items():
        print(f"held-out {key}: {value:.2f}")
    if result.skipped:
        print(f"{result.skipped} unreadable example(s) were skipped")
    if result.preset:
        print(f"preset written to {result.preset}")
    return 0
