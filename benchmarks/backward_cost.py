"""Backward vs forward cost of every op in one training step, for each model family; prints JSON lines.

    python3 benchmarks/backward_cost.py                    # every family, 8 x 32 x 32 clips, batch 8
    python3 benchmarks/backward_cost.py --family mtv_cva --batch 4

One SGD-momentum step is traced and run under the TF profiler. A forward op `X` and the gradient
ops TensorFlow made for it (named `gradient_tape/X/...`) are matched by name, so each forward op
gets its forward time and the time of its backward. An op whose backward costs more than
`--ratio` (10) times its forward, and at least `--min-share` of the step, is reported in
`slow_backward`: the kind of op that made the strided-Conv3D tubelet embedding 1000x slower to
train than to run on CPUs without oneDNN.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def _view(hidden: int, heads: int, patch, layers: int = 2) -> dict:
    return {"hidden_size": hidden, "num_heads": heads, "mlp_dim": 2 * hidden, "num_layers": layers,
            "patches": {"size": list(patch)}}


def family_config(family: str, frames: int, size: int) -> dict:
    """A small Scenic-style config of one model family (camera_motion_tiny's size by default)."""
    fusion = {"type": "cross_view_attention", "fusion_layers": [1], "fuse_in_descending_order": True,
              "use_query_config": True}
    if "bottleneck" in family:
        fusion = {"type": "bottleneck", "fusion_layers": [1], "fuse_in_descending_order": True,
                  "bottleneck_tokens": 4}
    if family == "mtv_no_fusion":
        fusion = None
    merge = "time" if family == "mtv_time_merge" else "channel"
    model = {"view_configs": [_view(64, 4, (8, 8, 4)), _view(96, 4, (8, 8, 2))], "cross_view_fusion": fusion,
             "global_encoder_config": {"num_heads": 4, "mlp_dim": 256, "num_layers": 1, "hidden_size": 128,
                                       "merge_axis": merge},
             "classifier": "token", "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "stochastic_depth": 0.1}
    if family.startswith("mm_"):
        streams = family[3:].replace("_bottleneck", "").split("_")
        model["modalities"] = {}
        if "rgb" not in streams:
            model.pop("view_configs")
        else:
            model["modalities"]["rgb"] = {}
        if "flow" in streams:
            model["modalities"]["flow"] = {"view_configs": [_view(64, 4, (8, 8, 4))], "channels": 2}
        if "audio" in streams:
            model["modalities"]["audio"] = {"view_configs": [_view(96, 4, (8, 8))], "mel_bins": 32,
                                            "num_frames": 4 * frames}
    return {"model": model, "dataset_configs": {"num_frames": frames, "crop_size": size, "num_classes": 13}}


FAMILIES = ("mtv_cva", "mtv_bottleneck", "mtv_no_fusion", "mtv_time_merge", "mm_rgb", "mm_flow", "mm_audio",
            "mm_rgb_flow_audio", "mm_rgb_flow_audio_bottleneck")


def backward_table(events, step_ms: float) -> list[dict]:
    """Per forward op: its time, its gradient ops' time and their ratio, costliest backward first."""
    forward = {scope: (op_type, ms) for scope, op_type, ms in events if not scope.startswith("gradient_tape/")}
    backward: collections.Counter = collections.Counter()
    grad_types = collections.defaultdict(set)
    for scope, op_type, ms in events:
        if not scope.startswith("gradient_tape/"):
            continue
        owner = scope[len("gradient_tape/"):]
        while owner and owner not in forward:  # the forward op is the longest prefix that ran forward
            owner = owner.rpartition("/")[0]
        if owner:
            backward[owner] += ms
            grad_types[owner].add(op_type)
    rows = []
    for scope, back_ms in backward.most_common():
        op_type, fwd_ms = forward[scope]
        rows.append({"op": scope, "type": op_type, "forward_ms": round(fwd_ms, 3), "backward_ms": round(back_ms, 3),
                     "ratio": round(back_ms / max(fwd_ms, 1e-6), 1), "share_of_step": round(back_ms / step_ms, 4),
                     "gradient_ops": sorted(grad_types[scope])})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Profiles one training step of each family and reports ops whose backward is out of proportion."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", action="append", choices=FAMILIES, help="repeatable; default: all")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ratio", type=float, default=10.0)
    p.add_argument("--min-share", type=float, default=0.01, help="ignore ops under this share of the step")
    p.add_argument("--top", type=int, default=5, help="costliest backward ops listed per family")
    p.add_argument("--conv-embedding", action="store_true", help="the strided-Conv embedding, for comparison")
    p.add_argument("--runs", type=int, default=3, help="profiled steps (op times are averaged over them)")
    args = p.parse_args(argv)
    if args.conv_embedding:
        common.use_conv_embedding()
    records = []
    for family in args.family or FAMILIES:
        record = profile_family(family, args)
        common.emit(record)
        records.append(record)
    return records


def profile_family(family: str, args: argparse.Namespace) -> dict:
    """Times forward and step of one family's model and matches each forward op with its gradient ops."""
    import keras
    import tensorflow as tf

    from mtv.models.builder import build_model

    model = build_model(family_config(family, args.frames, args.size), seed=0)
    shapes = model.input_shapes
    inputs = {k: tf.random.stateless_uniform((args.batch, *s), seed=(0, i), minval=-1.0, maxval=1.0)
              for i, (k, s) in enumerate(shapes.items())}
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    labels = tf.one_hot(tf.range(args.batch) % 13, 13)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    forward = tf.function(lambda x: model(x, training=False))
    step_timing = common.time_calls(lambda: step(x, labels), 3, 1)
    forward_timing = common.time_calls(lambda: forward(x), 3, 1)
    events = common.op_events(lambda: step(x, labels), runs=args.runs)
    rows = backward_table(events, step_ms=sum(ms for _, _, ms in events))
    slow = [r for r in rows if r["ratio"] > args.ratio and r["share_of_step"] >= args.min_share]
    record = {"benchmark": "backward_cost", "family": family,
              "embedding": "conv" if args.conv_embedding else "patchify_matmul", "batch": args.batch,
              "inputs": {k: list(v) for k, v in shapes.items()},
              "forward_s": common.sig(forward_timing.median_wall), "step_s": common.sig(step_timing.median_wall),
              "step_over_forward": common.sig(step_timing.median_wall / forward_timing.median_wall, 3),
              "slow_backward": slow, "costliest_backward": rows[:args.top]}
    record.update(common.machine())
    return record


if __name__ == "__main__":
    main()
