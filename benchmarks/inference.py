"""Forward-pass speed and memory of an MTV model on this machine; prints one JSON line.

    python3 benchmarks/inference.py                       # MTV-B K400, 1 x 32 x 224 x 224, float32
    python3 benchmarks/inference.py --dtype bfloat16 --xla --runs 3
    python3 benchmarks/inference.py --frames 8 --size 112 # a short variant for a quick look
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Builds the model, times `runs` forward passes, measures peak, FLOPs and memory."""
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    common.configure(args.threads, args.inter_op, args.dtype)
    import tensorflow as tf

    model, clip = common.build(args.config, args.batch, args.frames, args.size)
    forward = tf.function(lambda x: model(x, training=False), jit_compile=args.xla, reduce_retracing=False)
    peak = None if args.no_peak else common.MatmulPeak(args.peak_n)
    median, times = common.median_time(lambda: forward(clip), args.runs, args.warmup,
                                       between=peak.sample if peak else None)
    rss = common.peak_rss_mb()
    record = {"benchmark": "inference", "config": args.config, "input_shape": list(clip.shape),
              "dtype": args.dtype, "xla": args.xla, "params": model.count_params(),
              "median_s": round(median, 3), "times_s": [round(t, 3) for t in times]}
    if not args.no_flops:
        cost = common.xla_flops(lambda x: model(x, training=False), clip)
        record["gflop"] = round(cost["flops"] / 1e9, 1)
        record["gflop_dot_conv"] = round((cost["dot"] + cost["convolution"]) / 1e9, 1)
        record["transcendentals"] = cost["transcendentals"]
        record["achieved_gflops"] = round(record["gflop"] / median, 1)
    if peak:
        record["matmul_peak_gflops"] = round(peak.gflops(), 1)
        if "achieved_gflops" in record:
            record["fraction_of_peak"] = round(record["achieved_gflops"] / record["matmul_peak_gflops"], 3)
    record["peak_rss_mb"] = round(rss)
    record.update(common.machine())
    record["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    common.emit(record)
    return record


if __name__ == "__main__":
    main()
