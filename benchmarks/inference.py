"""Forward-pass speed and memory of an MTV model on this machine; prints one JSON line.

    python3 benchmarks/inference.py                       # MTV-B K400, 1 x 32 x 224 x 224, float32
    python3 benchmarks/inference.py --dtype bfloat16 --xla --runs 3
    python3 benchmarks/inference.py --frames 8 --size 112 # a short variant for a quick look
    python3 benchmarks/inference.py --profile             # also time each stage alone + TF profiler
    python3 benchmarks/inference.py --backend jax         # Keras' JAX backend: jax.jit, XLA's FLOPs and memory
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def _on_list(layer):
    """`layer` called on its positional arguments gathered in a list (tf.function wants plain args)."""
    return lambda *xs: layer(list(xs))


def stage_profile(model, clip, runs: int, xla: bool = False) -> dict:
    """Median CPU seconds and counted GFLOP of each stage of an MTV forward pass, each run on its own.

    Stages: tubelet embedding, each view's plain encoder blocks, the cross-view blocks, the global
    encoder (with pooling and the head). Each is a separate tf.function fed the real activations.
    """
    import tensorflow as tf

    backbone = model.backbone
    enc = backbone.encoder
    stages: dict[str, list] = {}

    def add(name, fn, *args):
        f = tf.function(fn, jit_compile=xla)
        timing = common.time_calls(lambda: f(*args), runs, 1)
        flop = common.xla_flops(fn, *args)["flops"]
        cpu, gflop = stages.get(name, (0.0, 0.0))
        stages[name] = (cpu + timing.median_cpu, gflop + flop / 1e9)
        return f(*args)

    tokens = add("embedding", lambda x: enc.add_position_embeddings(backbone.tokenize({"rgb": x})), clip)
    for lyr in range(enc.num_layers):
        if enc.cross_blocks[lyr] is not None:
            tokens = add("cross_view_blocks", _on_list(enc.cross_blocks[lyr]), *tokens)
            continue
        for i, block in enumerate(enc.blocks[lyr]):
            if block is not None:
                tokens[i] = add(f"encoder_view{i}", block, tokens[i])
    add("global_encoder_and_head",
        lambda *xs: model.output_projection(backbone.global_encode(list(xs))), *tokens)
    return {k: {"cpu_s": common.sig(c), "gflop": common.sig(g), "gflop_per_cpu_s": common.sig(g / c)}
            for k, (c, g) in stages.items()}


def main(argv: list[str] | None = None) -> dict:
    """Builds the model, times `runs` forward passes, measures peak, FLOPs and memory."""
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also time each model stage on its own")
    args = parser.parse_args(argv)
    common.select_backend(args.backend)
    if args.backend == "jax":
        return jax_main(args)
    common.configure(args.threads, args.inter_op, args.dtype)
    import tensorflow as tf

    model, clip = common.build(args.config, args.batch, args.frames, args.size)
    forward = tf.function(lambda x: model(x, training=False), jit_compile=args.xla, reduce_retracing=False)
    peak = None if args.no_peak else common.MatmulPeak(args.peak_n)
    timing = common.time_calls(lambda: forward(clip), args.runs, args.warmup,
                               between=peak.sample if peak else None)
    record = {"benchmark": "inference", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "xla": args.xla, "params": model.count_params()}
    record.update(common.summarize(timing, peak))
    if peak is not None:
        record.update(common.dtype_peak(args.dtype, args.peak_n))
    if not args.no_flops:
        record.update(common.flop_summary(lambda x: model(x, training=False), (clip,), timing, peak))
    if args.profile:
        record["stages"] = stage_profile(model, clip, args.runs, args.xla)
        if not args.xla:  # XLA runs a cluster as one op, so there is nothing to break down
            record["ops"] = common.op_profile(lambda: forward(clip), runs=1)
    record.update(common.machine())
    record["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    common.emit(record)
    return record


def jax_main(args) -> dict:
    """`main` on Keras' JAX backend: one jitted forward, timed, with XLA's FLOP count and memory plan."""
    if args.profile:
        raise SystemExit("--profile uses the TensorFlow profiler; it is not available with --backend jax")
    common.configure(dtype=args.dtype)
    from benchmarks import jax_bench

    model, clip = common.build(args.config, args.batch, args.frames, args.size, numpy_init=True)
    program, call_args = jax_bench.forward_program(model, clip)
    program.compile()
    if program.error:
        raise SystemExit(f"compiling the forward pass failed: {program.error}")
    times = jax_bench.time_forward(program, call_args, args.runs, args.warmup)
    record = {"benchmark": "inference", "backend": "jax", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "params": model.count_params(), **jax_bench.record(program, times, args.batch)}
    jax_bench.add_peak_and_device(record, args.dtype, None if args.no_peak else args.peak_n)
    record.update(common.machine())
    common.emit(record)
    return record


if __name__ == "__main__":
    main()
