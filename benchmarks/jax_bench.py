"""The benchmarks on Keras' JAX backend: a jitted stateless forward and SGD-momentum training step of an mtv
model, XLA's own FLOP count and memory plan of each compiled program, and a matmul rate measured in the same
process. Used by `inference.py --backend jax`, `train_step.py --backend jax` and `gpu.py`; needs no TensorFlow.

Numbers a record holds (all from the running process):
  median_s, times_s     wall seconds per call (outputs waited for), after the warm-up calls
  clips_per_s           batch / median_s
  gflop                 XLA's `cost_analysis()` FLOPs of the compiled program (multiply and add counted apart)
  achieved_gflops       gflop / median_s
  memory_gb             XLA's memory plan of the program: arguments + outputs + temporaries - donated
  compile_s             lowering + XLA compilation
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import keras
import numpy as np


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


@dataclasses.dataclass
class Program:
    """One jitted function lowered for fixed arguments, then compiled (possibly on a worker thread)."""

    name: str
    lowered: object
    compiled: object = None
    compile_s: float = 0.0
    error: str | None = None

    def compile(self) -> Program:
        """XLA-compiles the lowered program; an error (e.g. out of memory) is kept, not raised."""
        start = time.perf_counter()
        try:
            self.compiled = self.lowered.compile()
        except Exception as err:  # XLA reports resource exhaustion and bad programs as several types
            self.error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        self.compile_s += time.perf_counter() - start
        return self

    def gflop(self) -> float | None:
        """XLA's FLOP count of the compiled program, in GFLOP."""
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) / 1e9 if cost and "flops" in cost else None

    def memory_gb(self) -> float | None:
        """The program's planned device memory: arguments + outputs + temporaries - donated buffers."""
        stats = self.compiled.memory_analysis()
        if stats is None:
            return None
        total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                 - stats.alias_size_in_bytes)
        return total / 2**30


def lower(name: str, fn: Callable, *args, donate: Sequence[int] = ()) -> Program:
    """`jax.jit(fn)` lowered for `args` (tracing happens here, on the calling thread)."""
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args)
    return Program(name, lowered, compile_s=time.perf_counter() - start)


def compile_all(programs: list[Program], workers: int = 8) -> list[Program]:
    """Compiles every program, several at a time: XLA compiles on the CPU and releases the GIL."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(Program.compile, programs))


def state(model: keras.Model) -> tuple[list, list]:
    """(trainable, non-trainable) variable values of `model`, as JAX arrays."""
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def forward_program(model: keras.Model, clip, name: str = "forward") -> tuple[Program, tuple]:
    """The inference forward pass as a jitted stateless call; returns (program, its arguments)."""
    trainable, non_trainable = state(model)

    def forward(trainable, non_trainable, x):
        out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return out

    args = (trainable, non_trainable, clip)
    return lower(name, forward, *args), args


def train_program(model: keras.Model, clip, labels, learning_rate: float = 0.1,
                  name: str = "train_step") -> tuple[Program, tuple]:
    """One training step as `train_step.py` defines it (forward in training mode, softmax cross-entropy, SGD with
    momentum 0.9), jitted with the weights and optimizer state donated; returns (program, its arguments)."""
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    optimizer.build(model.trainable_variables)
    trainable, non_trainable = state(model)
    opt_vars = [v.value for v in optimizer.variables]

    def loss_fn(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        logits = jnp.asarray(logits, jnp.float32)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1)), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(trainable, non_trainable, opt_vars, x, y):
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, trainable, non_trainable, opt_vars

    args = (trainable, non_trainable, opt_vars, clip, labels)
    return lower(name, step, *args, donate=(0, 1, 2)), args


def one_hot_labels(model: keras.Model, batch: int):
    """Labels 0, 1, 2, ... as one-hot float32 rows (the training benchmark's stand-in for data)."""
    classes = int(model.spec["num_classes"])
    return jnp.asarray(np.eye(classes, dtype=np.float32)[np.arange(batch) % classes])


def _wait(out) -> None:
    jax.tree_util.tree_map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, out)


def time_forward(program: Program, args: tuple, runs: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `runs` calls of a compiled forward program, after `warmup` calls."""
    for _ in range(warmup):
        _wait(program.compiled(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _wait(program.compiled(*args))
        times.append(time.perf_counter() - start)
    return times


def time_train(program: Program, args: tuple, runs: int, warmup: int = 1) -> tuple[list[float], float]:
    """Wall seconds of `runs` training steps (each step's new state feeds the next), and the last loss."""
    trainable, non_trainable, opt_vars, x, y = args
    # The program donates its state, so it runs on copies and the model's own arrays stay valid.
    trainable, non_trainable, opt_vars = jax.tree_util.tree_map(jnp.copy, (trainable, non_trainable, opt_vars))
    times, loss = [], None
    for i in range(warmup + runs):
        start = time.perf_counter()
        loss, trainable, non_trainable, opt_vars = program.compiled(trainable, non_trainable, opt_vars, x, y)
        _wait((loss, trainable))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, float(loss)


def record(program: Program, times: list[float], batch: int) -> dict:
    """The fields every JAX benchmark record has (module docstring)."""
    median = statistics.median(times)
    out = {"median_s": _sig(median), "times_s": [_sig(t) for t in times], "clips_per_s": _sig(batch / median),
           "compile_s": round(program.compile_s, 2)}
    gflop = program.gflop()
    if gflop:
        out.update(gflop=_sig(gflop), achieved_gflops=_sig(gflop / median))
    memory = program.memory_gb()
    if memory is not None:
        out["memory_gb"] = _sig(memory)
    return out


def matmul_rate(n: int, dtype: str, repeats: int = 10) -> float:
    """Best GFLOP/s of an n x n x n matmul in `dtype` on the default device (the ceiling the model is held to)."""
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
    matmul = jax.jit(jnp.matmul)
    _wait(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _wait(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def add_peak_and_device(record: dict, dtype: str, peak_n: int | None) -> dict:
    """Adds the same-run matmul rate (unless `peak_n` is None), the fraction of it achieved, and the device."""
    if peak_n is not None:
        rate = matmul_rate(peak_n, "bfloat16" if dtype == "bfloat16" else "float32")
        record["matmul_peak_gflops"] = _sig(rate)
        if "achieved_gflops" in record:
            record["fraction_of_peak"] = _sig(record["achieved_gflops"] / rate, 3)
    record.update(device_info())
    return record


def device_info() -> dict:
    """The device the programs run on, and the peak memory it has seen in this process (None on a CPU)."""
    device = jax.devices()[0]
    info = {"platform": device.platform, "device": device.device_kind, "jax": jax.__version__,
            "keras": keras.__version__}
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        info["device_peak_gb"] = _sig(stats["peak_bytes_in_use"] / 2**30)
    return info


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Gives `target` (same architecture, e.g. another dtype policy) `source`'s weights."""
    for src, dst in zip(source.weights, target.weights, strict=True):
        dst.assign(src.value)
