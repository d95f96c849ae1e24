"""Speed and memory of one SGD training step of an MTV model on this machine; prints one JSON line.

    python3 benchmarks/train_step.py                      # MTV-B K400, batch 1 x 32 x 224 x 224, float32
    python3 benchmarks/train_step.py --frames 8 --size 112 --batch 2

The step is Scenic's recipe minus data: forward in training mode (stochastic depth on), softmax
cross-entropy on random one-hot labels, gradients, SGD with momentum 0.9 (Scenic's 'momentum'
optimizer). The FLOP count covers forward + backward; the optimizer update adds ~4 FLOP per
parameter (about 1 GFLOP for MTV-B), which is left out.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Builds the model and optimizer, times `runs` training steps, measures peak, FLOPs and memory."""
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    common.configure(args.threads, args.inter_op, args.dtype)
    import keras
    import tensorflow as tf

    model, clip = common.build(args.config, args.batch, args.frames, args.size)
    num_classes = int(model.spec["num_classes"])
    labels = tf.one_hot(tf.range(args.batch) % num_classes, num_classes)
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)

    def loss_and_grads(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    def step(x, y):
        loss, grads = loss_and_grads(x, y)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    compiled = tf.function(step, jit_compile=args.xla, reduce_retracing=False)
    peak = None if args.no_peak else common.MatmulPeak(args.peak_n)
    timing = common.time_calls(lambda: compiled(clip, labels), args.runs, args.warmup,
                               between=peak.sample if peak else None)
    record = {"benchmark": "train_step", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "xla": args.xla, "params": model.count_params(), "optimizer": "sgd_momentum"}
    record.update(common.summarize(timing, peak))
    if peak is not None:
        record.update(common.dtype_peak(args.dtype, args.peak_n))
    if not args.no_flops:
        record.update(common.flop_summary(loss_and_grads, (clip, labels), timing, peak))
    record.update(common.machine())
    record["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    common.emit(record)
    return record


if __name__ == "__main__":
    main()
