"""`mtv convert CHECKPOINT --config CFG --out DIR`: a Scenic checkpoint -> native preset (or back)."""

from __future__ import annotations

from absl import flags

from mtv.errors import CheckpointError

HELP = "convert a Scenic Flax checkpoint into a native preset, or a model back into a Flax checkpoint"
FLAGS = flags.FlagValues()
flags.DEFINE_string("config", None, "Scenic experiment config (.py, name or .json)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output preset directory (or checkpoint path with --to_scenic)",
                    flag_values=FLAGS)
flags.DEFINE_bool("to_scenic", False, "write a Flax msgpack checkpoint from a model handle instead",
                  flag_values=FLAGS)
flags.DEFINE_enum("layout", "optax", ["optax", "flax_optim"], "train-state layout of a written checkpoint",
                  flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.io.loading import load
    from mtv.io.presets import save_preset
    from mtv.io.scenic import from_scenic, to_scenic

    if len(argv) != 2 or not FLAGS.out:
        raise CheckpointError("usage: mtv convert CHECKPOINT --config CFG --out DIR  |  "
                              "mtv convert MODEL --to_scenic --out FILE")
    if FLAGS.to_scenic:
        model = load(argv[1], config=FLAGS.config)
        to_scenic(model, FLAGS.out, layout=FLAGS.layout)
        print(f"wrote Flax checkpoint {FLAGS.out}")
        return 0
    if not FLAGS.config:
        raise CheckpointError("--config is required to convert a Scenic checkpoint")
    model = from_scenic(FLAGS.config, argv[1])
    save_preset(model, FLAGS.out, metadata={"source": argv[1], "config": FLAGS.config})
    print(f"wrote preset {FLAGS.out} ({model.count_params():,} params)")
    return 0
