"""Shared pieces of the benchmarks: model set-up, timing, matmul peak, XLA FLOP count, peak memory.

Run by hand (not in CI). Every number is measured in the running process, so a benchmark's
`fraction_of_peak` compares the model with a matmul timed under the same load. The TensorFlow parts
(tf.function, the TF profiler, the HLO of `experimental_get_compiler_ir`) import TensorFlow on first use;
`--backend jax` (benchmarks/jax_bench.py) runs on a machine without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from mtv.utils.lazy_tf import LazyTensorFlow  # noqa: E402

tf = LazyTensorFlow("the TensorFlow benchmarks (--backend tensorflow)")

DEFAULT_CONFIG = "configs/kinetics/k400_mtv_b2_cva.py"
REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")


def select_backend(name: str) -> None:
    """Makes Keras run on `name` ('tensorflow' or 'jax'); call it before anything imports Keras."""
    keras_module = sys.modules.get("keras")
    if keras_module is not None and keras_module.backend.backend() != name:
        raise SystemExit(f"Keras is already imported here with the {keras_module.backend.backend()} backend; run "
                         f"the benchmark with --backend {name} in a fresh process")
    os.environ["KERAS_BACKEND"] = name


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config .py/.json path or experiment name")
    p.add_argument("--backend", choices=BACKENDS, default="tensorflow",
                   help="Keras backend: tensorflow (tf.function, oneDNN on CPU) or jax (jax.jit, XLA)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the config's)")
    p.add_argument("--size", type=int, default=None, help="crop height = width (default: the config's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--xla", action="store_true", help="tf.function(jit_compile=True) (JAX always compiles with XLA)")
    p.add_argument("--runs", type=int, default=3, help="timed runs after warm-up (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF's default)")
    p.add_argument("--inter-op", type=int, default=0, help="inter-op threads (0: TF's default)")
    p.add_argument("--no-flops", action="store_true", help="skip the XLA FLOP count")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    p.add_argument("--peak-n", type=int, default=4096, help="side of the square matmul for the peak")
    return p


def configure(threads: int = 0, inter_op: int = 0, dtype: str = "float32") -> None:
    """Thread pools (TensorFlow) and Keras dtype policy; must run before any TF op."""
    import keras

    if keras.backend.backend() == "tensorflow":
        try:
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            if inter_op:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError as err:  # TF already started in this process (e.g. called from a test)
            print(f"warning: thread settings not applied: {err}", file=sys.stderr)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")


def build(config: str, batch: int, frames: int | None, size: int | None, seed: int = 0, numpy_init: bool = False):
    """A randomly initialised model from `config` and a random clip batch of its input shape.

    `config` is a config .py (read by mtv.io.configs.load_config), an experiment name, or a
    Scenic-style .json; `frames` / `size` override the clip length and crop for shorter variants.
    `numpy_init`: draw the weights with NumPy (N(0, 0.02)) instead of Keras' initialisers; on JAX each of those
    compiles a kernel per weight shape, which costs more than the benchmark's own compilation on a CPU.
    """
    import contextlib

    from mtv.layers.common import skip_random_init
    from mtv.models.builder import build_model
    from mtv.models.spec import spec_from_config

    path = str(REPO / config) if (REPO / config).is_file() else str(config)
    shape = None
    if frames or size:
        rgb = spec_from_config(path)["modalities"]["rgb"]
        shape = (frames or rgb["num_frames"], size or rgb["image_size"][0], size or rgb["image_size"][1],
                 rgb["channels"])
    with skip_random_init() if numpy_init else contextlib.nullcontext():
        model = build_model(path, input_shape=shape, seed=seed)
    if numpy_init:
        rng = np.random.default_rng(seed)
        for var in model.trainable_variables:
            var.assign(rng.normal(0.0, 0.02, tuple(var.shape)).astype(np.float32))
    if list(model.input_shapes) != ["rgb"]:
        raise SystemExit(f"the benchmarks time RGB-only models; {config} takes {model.input_shapes}")
    return model, random_clip(model, batch, seed)


def random_clip(model, batch: int, seed: int = 0):
    """A float32 clip batch in [-1, 1] of the model's RGB input, as a tensor of the Keras backend."""
    import keras

    rng = np.random.default_rng(seed)
    clip = rng.uniform(-1.0, 1.0, (batch, *model.input_shapes["rgb"])).astype(np.float32)
    return keras.ops.convert_to_tensor(clip)


def use_conv_embedding() -> None:
    """Makes models built afterwards embed with their strided Conv layers (the path before patchify + matmul)."""
    import mtv.models.mtv_backbone  # every backbone (M&M too) embeds through this module's embed_patches

    mtv.models.mtv_backbone.embed_patches = lambda layer, x: layer(x)


class Timing:
    """Wall and process-CPU seconds of repeated calls.

    On a shared machine wall time depends on the other jobs; CPU seconds (all threads of this
    process) do much less, so throughput per CPU-second is the load-robust number.
    """

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn: Callable[[], object]) -> None:
        """Times one call of `fn`, its result fetched to the host."""
        w0, c0 = time.perf_counter(), time.process_time()
        _block(fn())
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)

    @property
    def median_wall(self) -> float:
        """Median wall seconds."""
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        """Median process-CPU seconds (all threads)."""
        return statistics.median(self.cpu)


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 1,
               between: Callable[[], None] | None = None) -> Timing:
    """Times `runs` calls of `fn` after `warmup` untimed ones; `between` runs after each timed call."""
    for _ in range(warmup):
        _block(fn())
    timing = Timing()
    for _ in range(runs):
        timing.run(fn)
        if between is not None:
            between()
    return timing


def _block(out) -> None:
    """Waits for every tensor in `out` (TF eager ops and JAX dispatch return before the work is done)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            _block(item)
    elif hasattr(out, "block_until_ready"):
        out.block_until_ready()
    elif hasattr(out, "numpy"):
        out.numpy()


class MatmulPeak:
    """Square-matmul throughput, sampled between model runs so both see the same machine load."""

    def __init__(self, n: int = 4096, dtype: str = "float32"):
        self.n = n
        a = tf.random.stateless_uniform((n, n), seed=(2, 3))
        b = tf.random.stateless_uniform((n, n), seed=(4, 5))
        self.a, self.b = tf.cast(a, dtype), tf.cast(b, dtype)
        self.fn = tf.function(tf.linalg.matmul)
        _block(self.fn(self.a, self.b))
        self.timing = Timing()

    def sample(self, repeats: int = 2) -> None:
        """Times `repeats` more matmuls."""
        for _ in range(repeats):
            self.timing.run(lambda: self.fn(self.a, self.b))

    @property
    def flop(self) -> int:
        """FLOPs of one matmul (multiply and add counted apart, as XLA does)."""
        return 2 * self.n ** 3

    def gflops(self) -> float:
        """Best wall-clock GFLOP/s: the peak is what the hardware reaches, not its mean under contention."""
        return self.flop / min(self.timing.wall) / 1e9

    def gflops_per_cpu_s(self) -> float:
        """GFLOP per CPU-second (median): the throughput-per-core measure, robust to other jobs."""
        return self.flop / self.timing.median_cpu / 1e9


# ------------------------------------------------------------------------------------- FLOP count
_SHAPE = re.compile(r"(pred|[subf]\d+|bf16)\[([\d,]*)\]")
# `[ROOT] %name = shape opcode(operands), attributes`; a tuple shape has spaces, hence the lazy match.
_INSTR = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_HEAD = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(")
# Opcodes XLA's HloCostAnalysis counts as transcendental; other elementwise maths counts 1 FLOP/element.
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "rsqrt", "sqrt",
                   "cbrt", "power", "sine", "cosine", "tan", "atan2", "logistic", "erf"}
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare",
                "select", "clamp", "floor", "ceil", "round-nearest-afz", "round-nearest-even", "sign",
                "remainder", "and", "or", "not", "xor"}


def _dims(text: str) -> list[int]:
    m = _SHAPE.search(text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if xs else 1


def _parse_hlo(hlo_text: str) -> tuple[dict, str | None]:
    """Computations of an HLO module: name -> [(name, is_root, out_shape, opcode, rest)], and ENTRY's name."""
    computations: dict[str, list] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        head = _HEAD.match(line)
        if head:
            current = head.group(2)
            computations[current] = []
            entry = current if head.group(1) else entry
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            root, name, out_shape, opcode, rest = m.groups()
            computations[current].append((name, bool(root), out_shape, opcode, rest))
    return computations, entry


def _operand_text(rest: str) -> str:
    """The operand list of an instruction (what precedes its attributes)."""
    return rest.split("),")[0] if ")," in rest else rest


def _live(instructions: list) -> set[str]:
    """Names the ROOT depends on: unoptimised HLO still holds dead code (e.g. input gradients
    nobody asked for), which XLA deletes before running and so does not count."""
    by_name = {name: rest for name, _, _, _, rest in instructions}
    todo = [name for name, root, *_ in instructions if root]
    live: set[str] = set()
    while todo:
        name = todo.pop()
        if name in live or name not in by_name:
            continue
        live.add(name)
        todo.extend(re.findall(r"%([\w.\-]+)", _operand_text(by_name[name])))
    return live


def _instruction_cost(out_shape: str, opcode: str, rest: str, cost: dict) -> None:
    """Adds one instruction's FLOPs to `cost`, the way XLA's HloCostAnalysis counts them."""
    out = _prod(_dims(out_shape))
    operands = [[int(d) for d in dims.split(",") if d] for _, dims in _SHAPE.findall(_operand_text(rest))]
    if opcode == "dot":
        contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        k = _prod([operands[0][int(i)] for i in contract.group(1).split(",") if i]) if contract else 1
        cost["dot"] += 2 * out * k
    elif opcode == "convolution":
        kernel = operands[1]
        labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
        # The kernel's input-feature dim is already per group: each output element does
        # (kernel taps x input features) multiply-adds, less the taps that land in the holes of
        # an input dilation (transposed convolutions in gradients).
        macs = out * (_prod(kernel) // kernel[labels.index("o")])
        dilate = re.search(r"lhs_dilate=([\dx]+)", rest)
        cost["convolution"] += 2 * macs // (_prod([int(d) for d in dilate.group(1).split("x")]) if dilate else 1)
    elif opcode in _TRANSCENDENTAL:
        cost["transcendentals"] += out
    elif opcode in _ELEMENTWISE:
        cost["elementwise"] += out
    elif opcode == "reduce":
        cost["reduce"] += _prod(operands[0]) - out


def hlo_cost(hlo_text: str) -> dict:
    """FLOPs of an unoptimised HLO module, counted the way XLA's HloCostAnalysis does.

    dot / convolution: 2 x multiply-adds; elementwise: 1 per output element; reduce: 1 per input
    element folded; exp/tanh/rsqrt/...: transcendentals. Dead code in the entry computation is
    skipped, and so are reducer computations (`to_apply=`), which `reduce` already accounts for.
    """
    computations, entry = _parse_hlo(hlo_text)
    reducers = set(re.findall(r"to_apply=%([\w.\-]+)", hlo_text))
    cost = {"dot": 0, "convolution": 0, "elementwise": 0, "reduce": 0, "transcendentals": 0}
    for comp, instructions in computations.items():
        if comp in reducers:
            continue
        live = _live(instructions) if comp == entry else None
        for name, _, out_shape, opcode, rest in instructions:
            if live is None or name in live:
                _instruction_cost(out_shape, opcode, rest, cost)
    cost["flops"] = cost["dot"] + cost["convolution"] + cost["elementwise"] + cost["reduce"]
    return cost


def xla_flops(fn: Callable, *args) -> dict:
    """Counts the FLOPs of `fn(*args)` from the HLO XLA lowers it to (nothing is compiled or run)."""
    jitted = tf.function(fn, jit_compile=True)
    return hlo_cost(jitted.experimental_get_compiler_ir(*args)(stage="hlo"))


# ------------------------------------------------------------------------------------ op profile
# Scope-name patterns -> the part of MTV an op belongs to (first match wins).
_PARTS = [("attention", r"MultiHeadDotProductAttention|msa_view|cross_attention_view"),
          ("mlp", r"MlpBlock|mlp_view"), ("layernorm", r"LayerNorm|_ln_view|encoder_norm"),
          ("embedding", r"embedding_view"), ("head", r"output_projection")]


def op_events(fn: Callable[[], object], runs: int = 1) -> list[tuple[str, str, float]]:
    """Runs `fn` under the TF profiler; (scoped op name, op type, milliseconds per run) of every op executed."""
    import collections
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    _block(fn())
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(runs):
            _block(fn())
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]).read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # TF ops are 'scope/name:OpType'
                    continue
                totals[tuple(name.rsplit(":", 1))] += event.duration_ps / 1e9 / runs
    return [(scope, op_type, ms) for (scope, op_type), ms in totals.items()]


def op_profile(fn: Callable[[], object], runs: int = 1, top: int = 12) -> dict:
    """Runs `fn` under the TF profiler; milliseconds per run by op type and by model part.

    Times are each op's span on TF's executor threads; independent ops may run at the same time,
    so the totals can exceed the wall time.
    """
    import collections

    by_type, by_part = collections.Counter(), collections.Counter()
    for scope, op_type, ms in op_events(fn, runs):
        by_type[op_type] += ms
        by_part[next((part for part, pat in _PARTS if re.search(pat, scope)), "other")] += ms
    return {"op_ms_total": round(sum(by_type.values()), 1),
            "op_ms_by_type": {k: round(v, 1) for k, v in by_type.most_common(top)},
            "op_ms_by_part": {k: round(v, 1) for k, v in by_part.most_common()}}


# ---------------------------------------------------------------------------------------- report
def rss_mb() -> float:
    """The current resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def dtype_peak(dtype: str, n: int, repeats: int = 3) -> dict:
    """For a non-float32 run, that dtype's own matmul peak (without bf16 hardware it is below float32's)."""
    if dtype == "float32":
        return {}
    peak = MatmulPeak(n, dtype)
    peak.sample(repeats)
    return {f"matmul_peak_{dtype}_gflops": sig(peak.gflops())}


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits (tiny test models have GFLOP counts like 0.0123)."""
    return float(f"{x:.{digits}g}")


def summarize(timing: Timing, peak: MatmulPeak | None) -> dict:
    """Timing fields of the report, and the peak RSS reached so far (call it before the FLOP count)."""
    out = {"median_s": sig(timing.median_wall), "times_s": [sig(t) for t in timing.wall],
           "median_cpu_s": sig(timing.median_cpu), "peak_rss_mb": round(peak_rss_mb())}
    if peak is not None:
        out["matmul_peak_gflops"] = sig(peak.gflops())
        out["matmul_gflop_per_cpu_s"] = sig(peak.gflops_per_cpu_s())
    return out


def flop_summary(fn: Callable, args: tuple, timing: Timing, peak: MatmulPeak | None) -> dict:
    """Counted GFLOP of `fn(*args)` and the achieved fraction of the matmul peak, wall and per CPU-second."""
    cost = xla_flops(fn, *args)
    gflop = cost["flops"] / 1e9
    out = {"gflop": sig(gflop), "gflop_dot_conv": sig((cost["dot"] + cost["convolution"]) / 1e9),
           "transcendentals": cost["transcendentals"],
           "achieved_gflops": sig(gflop / timing.median_wall),
           "achieved_gflop_per_cpu_s": sig(gflop / timing.median_cpu)}
    if peak is not None:
        out["fraction_of_peak"] = sig(gflop / timing.median_wall / peak.gflops(), 3)
        out["fraction_of_peak_cpu"] = sig(gflop / timing.median_cpu / peak.gflops_per_cpu_s(), 3)
    return out


def machine() -> dict:
    """CPU model, core count and the ISA flags that matter for float32/bfloat16 matmuls."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
    out = {"cpu": model, "cores": os.cpu_count(), "isa": isa, "load_avg_1m": round(os.getloadavg()[0], 2)}
    for name, key in (("tensorflow", "tf"), ("jax", "jax"), ("keras", "keras")):
        module = sys.modules.get(name)
        if module is not None:
            out[key] = module.__version__
    return out


def emit(record: dict) -> None:
    """Prints the one JSON line a benchmark reports."""
    print(json.dumps(record, sort_keys=False), flush=True)
