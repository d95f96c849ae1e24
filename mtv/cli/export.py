"""`mtv export MODEL OUT_DIR`: write a TF SavedModel of an MTV or M&M model (and optionally a TF-Hub tarball)."""

from __future__ import annotations

from absl import flags

from mtv.errors import ExportError

HELP = "export a model as a TF SavedModel with named serving signatures"
FLAGS = flags.FlagValues()
flags.DEFINE_bool("xla", False, "compile the model function (serving_default, tpu_candidate) with XLA",
                  flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of the export", flag_values=FLAGS)
flags.DEFINE_string("hub_tarball", None, "also write a TF-Hub .tar.gz here", flag_values=FLAGS)
flags.DEFINE_string("config", None, "Scenic config, when MODEL is a Scenic checkpoint", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.io.hub import TPU_ALIAS, export, signature_inputs
    from mtv.io.loading import load

    if len(argv) != 3:
        raise ExportError("usage: mtv export MODEL OUT_DIR [--xla] [--dtype bfloat16] [--hub_tarball F]")
    model = load(argv[1], config=FLAGS.config)
    path = export(model, argv[2], xla=FLAGS.xla, dtype=FLAGS.dtype, hub_tarball=FLAGS.hub_tarball)
    print(f"wrote SavedModel {path}")
    for name, inputs in signature_inputs(model).items():
        print(f"  signature {name}({', '.join(inputs)})")
    print(f"  function alias {TPU_ALIAS}: serving_default (for TPU inference converters)")
    if FLAGS.hub_tarball:
        print(f"wrote TF-Hub tarball {FLAGS.hub_tarball}")
    return 0
