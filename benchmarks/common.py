"""Shared pieces of the benchmarks: model set-up, timing, matmul peak, XLA FLOP count, peak memory.

Run by hand (not in CI). Every number is measured in the running process, so a benchmark's
`fraction_of_peak` compares the model with a matmul timed under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

DEFAULT_CONFIG = "configs/kinetics/k400_mtv_b2_cva.py"
REPO = Path(__file__).resolve().parents[1]


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config .py/.json path or experiment name")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the config's)")
    p.add_argument("--size", type=int, default=None, help="crop height = width (default: the config's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--xla", action="store_true", help="tf.function(jit_compile=True)")
    p.add_argument("--runs", type=int, default=3, help="timed runs after warm-up (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF's default)")
    p.add_argument("--inter-op", type=int, default=0, help="inter-op threads (0: TF's default)")
    p.add_argument("--no-flops", action="store_true", help="skip the XLA FLOP count")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    p.add_argument("--peak-n", type=int, default=4096, help="side of the square matmul for the peak")
    return p


def configure(threads: int = 0, inter_op: int = 0, dtype: str = "float32") -> None:
    """Thread pools and Keras dtype policy; must run before any TF op."""
    import keras

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")


def build(config: str, batch: int, frames: int | None, size: int | None, seed: int = 0):
    """A randomly initialised model from `config` and a random clip batch of its input shape."""
    from mtv.configs_io import load_config
    from mtv.models.builder import build_model

    path = REPO / config if (REPO / config).is_file() else config
    cfg = load_config(str(path))
    shape = None
    if frames or size:
        crop = size or int(cfg.dataset_configs.get("crop_size", 224))
        shape = (frames or int(cfg.dataset_configs.num_frames), crop, crop, 3)
    model = build_model(cfg, input_shape=shape, seed=seed)
    clip = tf.random.stateless_uniform((batch, *model.input_frames_shape), seed=(seed, 1),
                                       minval=-1.0, maxval=1.0)
    return model, clip


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
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
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
    """Waits for every tensor in `out` (TF eager ops may return before the work is done)."""
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)


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
        return 2 * self.n ** 3

    def gflops(self) -> float:
        """Best wall-clock GFLOP/s: the peak is what the hardware reaches, not its mean under contention."""
        return self.flop / min(self.timing.wall) / 1e9

    def gflops_per_cpu_s(self) -> float:
        """GFLOP per CPU-second (median): the throughput-per-core measure, robust to other jobs."""
        return self.flop / self.timing.median_cpu / 1e9


# ------------------------------------------------------------------------------------- FLOP count
_SHAPE = re.compile(r"(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(\S+?\[[\d,]*\])\S*\s+([\w\-]+)\((.*)$")
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


def hlo_cost(hlo_text: str) -> dict:
    """FLOPs of an unoptimised HLO module, counted the way XLA's HloCostAnalysis does.

    dot / convolution: 2 x multiply-adds; elementwise: 1 per output element; reduce: 1 per input
    element folded; exp/tanh/rsqrt/...: transcendentals. Computations that are only reducers
    (`to_apply=`) are skipped since `reduce` already accounts for them.
    """
    reducers = set(re.findall(r"to_apply=%([\w.\-]+)", hlo_text))
    cost = {"dot": 0, "convolution": 0, "elementwise": 0, "reduce": 0, "transcendentals": 0}
    skip = False
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(", line)
        if head:
            skip = head.group(1) in reducers
            continue
        m = _INSTR.match(line)
        if skip or not m:
            continue
        out_shape, opcode, rest = m.groups()
        out = _prod(_dims(out_shape))
        operands = _SHAPE.findall(rest.split("),")[0] if ")," in rest else rest)
        if opcode == "dot":
            lhs = [int(d) for d in operands[0][1].split(",") if d]
            contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
            k = _prod([lhs[int(i)] for i in contract.group(1).split(",") if i]) if contract else 1
            cost["dot"] += 2 * out * k
        elif opcode == "convolution":
            kernel = [int(d) for d in operands[1][1].split(",") if d]
            labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
            # The kernel's input-feature dim is already per group: each output element does
            # (kernel taps x input features) multiply-adds.
            cost["convolution"] += 2 * out * (_prod(kernel) // kernel[labels.index("o")])
        elif opcode in _TRANSCENDENTAL:
            cost["transcendentals"] += out
        elif opcode in _ELEMENTWISE:
            cost["elementwise"] += out
        elif opcode == "reduce":
            inp = _prod([int(d) for d in operands[0][1].split(",") if d])
            cost["reduce"] += inp - out
    cost["flops"] = cost["dot"] + cost["convolution"] + cost["elementwise"] + cost["reduce"]
    return cost


def xla_flops(fn: Callable, *args) -> dict:
    """Counts the FLOPs of `fn(*args)` from the HLO XLA lowers it to (nothing is compiled or run)."""
    jitted = tf.function(fn, jit_compile=True)
    return hlo_cost(jitted.experimental_get_compiler_ir(*args)(stage="hlo"))


# ---------------------------------------------------------------------------------------- report
def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(timing: Timing, peak: MatmulPeak | None) -> dict:
    """Timing fields of the report, and the peak RSS reached so far (call it before the FLOP count)."""
    out = {"median_s": round(timing.median_wall, 3), "times_s": [round(t, 3) for t in timing.wall],
           "median_cpu_s": round(timing.median_cpu, 3), "peak_rss_mb": round(peak_rss_mb())}
    if peak is not None:
        out["matmul_peak_gflops"] = round(peak.gflops(), 1)
        out["matmul_gflop_per_cpu_s"] = round(peak.gflops_per_cpu_s(), 1)
    return out


def flop_summary(fn: Callable, args: tuple, timing: Timing, peak: MatmulPeak | None) -> dict:
    """Counted GFLOP of `fn(*args)` and the achieved fraction of the matmul peak, wall and per CPU-second."""
    cost = xla_flops(fn, *args)
    gflop = cost["flops"] / 1e9
    out = {"gflop": round(gflop, 1), "gflop_dot_conv": round((cost["dot"] + cost["convolution"]) / 1e9, 1),
           "transcendentals": cost["transcendentals"],
           "achieved_gflops": round(gflop / timing.median_wall, 1),
           "achieved_gflop_per_cpu_s": round(gflop / timing.median_cpu, 1)}
    if peak is not None:
        out["fraction_of_peak"] = round(out["achieved_gflops"] / peak.gflops(), 3)
        out["fraction_of_peak_cpu"] = round(out["achieved_gflop_per_cpu_s"] / peak.gflops_per_cpu_s(), 3)
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
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "tf": tf.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def emit(record: dict) -> None:
    """Prints the one JSON line a benchmark reports."""
    print(json.dumps(record, sort_keys=False), flush=True)
