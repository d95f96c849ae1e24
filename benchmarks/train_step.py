"""Speed and memory of one SGD training step of an MTV model on this machine; prints one JSON line.

    python3 benchmarks/train_step.py                      # MTV-B K400, batch 1 x 32 x 224 x 224, float32
    python3 benchmarks/train_step.py --frames 8 --size 112 --batch 2
    python3 benchmarks/train_step.py --config camera_motion_tiny --batch 8
    python3 benchmarks/train_step.py --conv-embedding         # the strided-Conv3D embedding, for comparison
    python3 benchmarks/train_step.py --profile                # + TF-profiler op times of one step
    python3 benchmarks/train_step.py --backend jax            # Keras' JAX backend (jax.jit, donated state)

It also times the forward pass (inference mode) of the same model and clip in the same process,
and reports `step_over_forward`: a training step costs about 3x the forward in FLOPs.

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
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--conv-embedding", action="store_true",
                        help="embed with the strided Conv3D/Conv2D layers (the path before patchify + matmul)")
    parser.add_argument("--profile", action="store_true", help="also report TF-profiler op times of one step")
    args = parser.parse_args(argv)
    common.select_backend(args.backend)
    if args.backend == "jax":
        return jax_main(args)
    common.configure(args.threads, args.inter_op, args.dtype)
    import keras
    import tensorflow as tf

    if args.conv_embedding:
        common.use_conv_embedding()
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
    forward = tf.function(lambda x: model(x, training=False), jit_compile=args.xla, reduce_retracing=False)
    peak = None if args.no_peak else common.MatmulPeak(args.peak_n)
    forward_timing = common.time_calls(lambda: forward(clip), args.runs, args.warmup)
    timing = common.time_calls(lambda: compiled(clip, labels), args.runs, args.warmup,
                               between=peak.sample if peak else None)
    record = {"benchmark": "train_step", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "xla": args.xla, "params": model.count_params(), "optimizer": "sgd_momentum",
              "embedding": "conv" if args.conv_embedding else "patchify_matmul"}
    record.update(common.summarize(timing, peak))
    record["forward_median_s"] = common.sig(forward_timing.median_wall)
    record["forward_median_cpu_s"] = common.sig(forward_timing.median_cpu)
    record["step_over_forward"] = common.sig(timing.median_wall / forward_timing.median_wall, 3)
    record["step_over_forward_cpu"] = common.sig(timing.median_cpu / forward_timing.median_cpu, 3)
    if peak is not None:
        record.update(common.dtype_peak(args.dtype, args.peak_n))
    if not args.no_flops:
        record.update(common.flop_summary(loss_and_grads, (clip, labels), timing, peak))
    if args.profile:
        record["ops"] = common.op_profile(lambda: compiled(clip, labels), runs=1, top=40)
    record.update(common.machine())
    record["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    common.emit(record)
    return record


def jax_main(args) -> dict:
    """`main` on Keras' JAX backend: the same step as one jitted program, and the forward pass beside it."""
    if args.profile:
        raise SystemExit("--profile uses the TensorFlow profiler; it is not available with --backend jax")
    common.configure(dtype=args.dtype)
    from benchmarks import jax_bench

    if args.conv_embedding:
        common.use_conv_embedding()
    model, clip = common.build(args.config, args.batch, args.frames, args.size, numpy_init=True)
    labels = jax_bench.one_hot_labels(model, args.batch)
    forward, forward_args = jax_bench.forward_program(model, clip)
    step, step_args = jax_bench.train_program(model, clip, labels)
    for program in jax_bench.compile_all([forward, step]):
        if program.error:
            raise SystemExit(f"compiling {program.name} failed: {program.error}")
    forward_times = jax_bench.time_forward(forward, forward_args, args.runs, args.warmup)
    times, loss = jax_bench.time_train(step, step_args, args.runs, args.warmup)
    record = {"benchmark": "train_step", "backend": "jax", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "params": model.count_params(), "optimizer": "sgd_momentum",
              "embedding": "conv" if args.conv_embedding else "patchify_matmul",
              **jax_bench.record(step, times, args.batch), "loss": common.sig(loss)}
    fwd = jax_bench.record(forward, forward_times, args.batch)
    record["forward_median_s"] = fwd["median_s"]
    record["forward_gflop"] = fwd.get("gflop")
    record["step_over_forward"] = common.sig(record["median_s"] / fwd["median_s"], 3)
    jax_bench.add_peak_and_device(record, args.dtype, None if args.no_peak else args.peak_n)
    record.update(common.machine())
    common.emit(record)
    return record


if __name__ == "__main__":
    main()
