"""`mtv export MODEL OUT_DIR`: write a TF SavedModel of an MTV or M&M model (and optionally a TF-Hub tarball).

`mtv export MODEL OUT_DIR --streaming=HEAD_DIR` writes instead the streaming classifier's SavedModel
(`mtv.long.streaming.export_streaming`: one `step` signature with the K-token memory as explicit state in and
out) of MODEL's backbone (a zoo name, preset, .keras file or training workdir) and a streaming head trained on
that backbone (a directory written by `mtv.long.train_streaming.save_streaming_head`).
"""

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
flags.DEFINE_string("streaming", None, "a trained streaming head directory: export the streaming classifier (MODEL's "
                    "backbone + this head, memory as state in/out) instead", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.io.hub import TPU_ALIAS, export, signature_inputs
    from mtv.io.loading import load

    if len(argv) != 3:
        raise ExportError("usage: mtv export MODEL OUT_DIR [--xla] [--dtype bfloat16] [--hub_tarball F] | "
                          "mtv export MODEL OUT_DIR --streaming=HEAD_DIR")
    if FLAGS.streaming:
        return _export_streaming(argv[1], argv[2])
    model = load(argv[1], config=FLAGS.config)
    path = export(model, argv[2], xla=FLAGS.xla, dtype=FLAGS.dtype, hub_tarball=FLAGS.hub_tarball)
    print(f"wrote SavedModel {path}")
    for name, inputs in signature_inputs(model).items():
        print(f"  signature {name}({', '.join(inputs)})")
    print(f"  function alias {TPU_ALIAS}: serving_default (for TPU inference converters)")
    if FLAGS.hub_tarball:
        print(f"wrote TF-Hub tarball {FLAGS.hub_tarball}")
    return 0


def _load_backbone_model(handle: str):
    """MODEL as `mtv.load` takes it, or a training workdir / checkpoint (built from its recorded config)."""
    from mtv.eval.evaluate import load_for_eval, run_config
    from mtv.io.loading import load

    if FLAGS.config is None and run_config(handle) is not None:
        return load_for_eval(checkpoint=handle)
    return load(handle, config=FLAGS.config)


def _export_streaming(handle: str, out_dir: str) -> int:
    from mtv.long.streaming import STEP_SIGNATURE, export_streaming
    from mtv.long.train_streaming import load_streaming_head

    if FLAGS.xla or FLAGS.dtype != "float32" or FLAGS.hub_tarball:
        raise ExportError("--streaming exports the float32 `step` signature only; drop --xla, --dtype and "
                          "--hub_tarball")
    model = load_streaming_head(FLAGS.streaming, _load_backbone_model(handle))
    path = export_streaming(model, out_dir)
    clip = ", ".join(["frames"] if list(model.input_shapes) == ["rgb"] else list(model.input_shapes))
    print(f"wrote streaming SavedModel {path} (memory {model.memory_size} tokens x {model.token_width}, "
          f"{model.num_classes} classes)")
    print(f"  signature {STEP_SIGNATURE}(memory, memory_weights, {clip}) -> memory, memory_weights, logits, "
          "probabilities")
    return 0
