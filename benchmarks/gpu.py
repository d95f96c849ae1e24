"""MTV-B on a GPU with Keras' JAX backend, against the GPU's own matmul rate and Scenic's Flax model; one JSON file.

Two steps. Here (a machine with pip and network):

    python3 benchmarks/gpu.py prepare [--scenic ~/src/scenic]

downloads wheels of what the GPU machine lacks (keras and its small pure-Python or manylinux dependencies, for
that machine's Python) into the ignored folder .gpu_bench/, and, with --scenic, copies the files of Scenic's MTV
model from your Scenic checkout there (nothing of Scenic is committed). Then, on the GPU machine, with .gpu_bench
carried along the checkout:

    python3 benchmarks/gpu.py run --out results.json

installs the wheels into .gpu_bench/site (no network), and measures in one process: for float32 and
mixed_bfloat16 and batch 1, 8 and 32, MTV-B K400's forward pass and training step (clips/s, XLA's memory plan,
XLA's FLOPs), the bfloat16 and float32 matmul rates of the same GPU, and Scenic's MTV forward on the same clips
with the same weights (its logits are compared with ours). Programs are compiled in parallel first, then timed
one at a time. `run --dry-run` does all of it on the CPU with a tiny config and small batches (what CI runs).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

PREPARED = common.REPO / ".gpu_bench"
# What the lent H200's image lacks for this benchmark (benchmarks/README.md): Keras and the parts of its and
# mtv's dependencies that are not there. Versions are those installed here, so both machines run the same Keras.
WHEELS = ("keras", "namex", "optree", "ml-collections")
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
FULL = {"config": common.DEFAULT_CONFIG, "batches": (1, 8, 32), "runs": 5, "warmup": 2, "matmul_n": 8192}
DRY = {"config": "configs/camera_motion/camera_motion_tiny.py", "batches": (1, 2), "runs": 2, "warmup": 1,
       "matmul_n": 256}
TARGET_FRACTION = 0.40  # bfloat16 forward at the largest batch: at least this share of the bf16 matmul rate


# ---------------------------------------------------------------------------------------------- prepare
def pip_download_command(dest: Path, packages: list[str]) -> list[str]:
    """`pip download` of binary wheels for the GPU machine's Python (no dependencies: each one is named)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           TARGET_PYTHON, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + packages


def pinned(names=WHEELS) -> list[str]:
    """`name==version` of each package as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def prepare(args) -> dict:
    """Downloads the wheels and copies Scenic's MTV sources into `args.dir`; writes and returns its manifest."""
    from benchmarks import scenic_model

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"python": TARGET_PYTHON}
    if args.wheels:
        wheels = folder / "wheels"
        wheels.mkdir(exist_ok=True)
        for old in wheels.glob("*.whl"):
            old.unlink()
        subprocess.run(pip_download_command(wheels, pinned()), check=True)
        manifest["wheels"] = sorted(p.name for p in wheels.glob("*.whl"))
    if args.scenic:
        manifest["scenic_files"] = scenic_model.copy_sources(args.scenic, folder / "scenic")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    manifest["size_mb"] = round(size / 2**20, 2)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest))
    print(f"prepared {folder} ({manifest['size_mb']} MB). On the GPU machine, with it carried along the "
          f"checkout:\n  python3 benchmarks/gpu.py run --out results.json")
    return manifest


def install_wheels(folder: Path) -> None:
    """Makes the prepared wheels importable (installed once into folder/site, offline), if Keras is missing."""
    if importlib.util.find_spec("keras") is not None:
        return
    wheels = sorted((folder / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"Keras is not installed and {folder}/wheels holds no wheels: run "
                         "`python3 benchmarks/gpu.py prepare` on a machine with network first, and carry its folder")
    site = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True)
    sys.path.insert(0, str(site))


# ------------------------------------------------------------------------------------------------- run
def _scenic(folder: Path, dry_run: bool):
    """(Scenic's model module, model_utils, stand-ins), or why it is skipped (our rows are measured anyway)."""
    from benchmarks import scenic_model

    if importlib.util.find_spec("flax") is None:
        return "skipped: flax is not installed here (it is on the GPU machine)"
    if not (folder / "scenic").is_dir():
        return (f"skipped: no Scenic sources in {folder}/scenic (run `benchmarks/gpu.py prepare --scenic "
                f"PATH_TO_SCENIC_CHECKOUT`{'; a dry run needs them too' if dry_run else ''})")
    try:
        return scenic_model.import_mtv(folder / "scenic")
    except Exception as err:  # a Scenic version this loader does not handle: report it, measure ours
        return f"failed: importing Scenic's MTV raised {type(err).__name__}: {str(err)[:300]}"


def _models(settings: dict, dtypes: list[str]) -> dict:
    """One mtv model per dtype policy, with the same (random) weights."""
    import keras

    from benchmarks import jax_bench
    from mtv.layers.common import skip_random_init

    models = {}
    for dtype in dtypes:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
        if not models:
            models[dtype], _ = common.build(settings["config"], 1, None, None, numpy_init=True)
        else:
            with skip_random_init():
                models[dtype], _ = common.build(settings["config"], 1, None, None)
            jax_bench.copy_weights(next(iter(models.values())), models[dtype])
    keras.mixed_precision.set_global_policy("float32")
    return models


def run(args) -> dict:
    """Lowers, compiles (in parallel) and times every program; writes the JSON report and prints a table."""
    folder = Path(args.dir)
    if not args.dry_run:
        install_wheels(folder)
    common.select_backend("jax")
    import jax
    import numpy as np

    from benchmarks import jax_bench

    settings = dict(DRY if args.dry_run else FULL)
    settings.update({k: v for k, v in (("config", args.config), ("runs", args.runs)) if v})
    if args.batches:
        settings["batches"] = tuple(int(b) for b in args.batches.split(","))
    platform = jax.devices()[0].platform
    if platform != "gpu" and not args.dry_run:
        raise SystemExit(f"JAX sees no GPU here (platform {platform!r}); run with --dry-run to check the script on "
                         "a CPU")
    dtypes = ["float32", "bfloat16"]
    start = time.perf_counter()
    models = _models(settings, dtypes)
    reference = models["float32"]
    clips = {b: common.random_clip(reference, b, seed=b) for b in settings["batches"]}
    programs, calls = [], {}
    for dtype in dtypes:
        for batch in settings["batches"]:
            model = models[dtype]
            key = ("forward", dtype, batch)
            prog, call = jax_bench.forward_program(model, clips[batch], name="/".join(map(str, key)))
            programs.append(prog)
            calls[prog.name] = (key, call)
            key = ("train_step", dtype, batch)
            prog, call = jax_bench.train_program(model, clips[batch], jax_bench.one_hot_labels(model, batch),
                                                 name="/".join(map(str, key)))
            programs.append(prog)
            calls[prog.name] = (key, call)

    scenic = _scenic(folder, args.dry_run)
    scenic_info: dict = {"status": scenic} if isinstance(scenic, str) else {}
    if not scenic_info:
        from mtv.io.configs import load_config
        from mtv.io.scenic import to_scenic

        scenic_mod, scenic_utils, stand_ins = scenic
        scenic_info = {"status": "measured", "stand_ins": stand_ins}
        config = load_config(str(common.REPO / settings["config"]))
        params = jax.device_put(to_scenic(reference))
        classes = int(reference.spec["num_classes"])
        try:
            for dtype in dtypes:
                module = scenic_model_for(scenic_mod, scenic_utils, config, classes, dtype)
                for batch in settings["batches"]:
                    key = ("scenic_forward", dtype, batch)
                    prog = jax_bench.lower("/".join(map(str, key)),
                                           lambda p, x, module=module: module.apply({"params": p}, x, train=False),
                                           params, clips[batch])
                    programs.append(prog)
                    calls[prog.name] = (key, (params, clips[batch]))
        except Exception as err:  # e.g. a param tree Scenic's version names differently: ours are still measured
            scenic_info["status"] = f"failed: tracing Scenic's MTV raised {type(err).__name__}: {str(err)[:300]}"
    lowered_s = time.perf_counter() - start
    jax_bench.compile_all(programs, workers=min(8, os.cpu_count() or 1))
    compiled_s = time.perf_counter() - start - lowered_s

    rates = {dtype: jax_bench.matmul_rate(settings["matmul_n"], dtype) for dtype in dtypes}
    rows = []
    outputs = {}
    for prog in programs:
        (kind, dtype, batch), call = calls[prog.name]
        row = {"kind": kind, "dtype": dtype, "batch": batch}
        if prog.error:
            rows.append({**row, "error": prog.error})
            continue
        try:
            if kind == "train_step":
                times, loss = jax_bench.time_train(prog, call, settings["runs"], settings["warmup"])
                row["loss"] = common.sig(loss)
            else:
                times = jax_bench.time_forward(prog, call, settings["runs"], settings["warmup"])
                if dtype == "float32" and batch == settings["batches"][0]:
                    outputs[kind] = np.asarray(prog.compiled(*call), np.float32)
        except Exception as err:  # out of memory at run time, reported in its row
            rows.append({**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"})
            continue
        row.update(jax_bench.record(prog, times, batch))
        if "achieved_gflops" in row:
            row["fraction_of_bf16_matmul"] = common.sig(row["achieved_gflops"] / rates["bfloat16"], 3)
            row["fraction_of_own_dtype_matmul"] = common.sig(row["achieved_gflops"] / rates[dtype], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if "scenic_forward" in outputs:
        scenic_info["max_abs_logit_diff_float32"] = float(np.abs(outputs["scenic_forward"] - outputs["forward"]).max())

    report = {"benchmark": "gpu", "dry_run": bool(args.dry_run), "config": settings["config"],
              "input_shape": list(reference.input_shapes["rgb"]), "params": reference.count_params(),
              "batches": list(settings["batches"]), "runs": settings["runs"], "warmup": settings["warmup"],
              "matmul_n": settings["matmul_n"], "matmul_gflops": {k: common.sig(v) for k, v in rates.items()},
              "lower_s": round(lowered_s, 1), "compile_s": round(compiled_s, 1),
              "total_s": round(time.perf_counter() - start, 1), "scenic": scenic_info, "rows": rows,
              "targets": targets(rows, settings["batches"][-1]), **jax_bench.device_info(), **common.machine()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report))
    return report


def scenic_model_for(scenic_mod, scenic_utils, config, classes: int, dtype: str):
    """Scenic's MTV for `config` computing in `dtype` (its parameters stay float32, as Scenic's)."""
    import jax.numpy as jnp

    from benchmarks import scenic_model

    return scenic_model.build_mtv(scenic_mod, scenic_utils, config, classes, getattr(jnp, dtype))


def targets(rows: list[dict], batch: int) -> dict:
    """The issue's targets at the largest batch: bf16 forward >= 40% of the bf16 matmul rate, >= Scenic's clips/s."""
    def find(kind):
        return next((r for r in rows if r["kind"] == kind and r["dtype"] == "bfloat16" and r["batch"] == batch
                     and "clips_per_s" in r), None)

    ours, theirs = find("forward"), find("scenic_forward")
    out = {"batch": batch}
    if ours is not None and "fraction_of_bf16_matmul" in ours:
        out["bf16_forward_fraction"] = ours["fraction_of_bf16_matmul"]
        out["fraction_met"] = ours["fraction_of_bf16_matmul"] >= TARGET_FRACTION
    if ours is not None and theirs is not None:
        out["clips_per_s_vs_scenic"] = common.sig(ours["clips_per_s"] / theirs["clips_per_s"], 3)
        out["scenic_met"] = ours["clips_per_s"] >= theirs["clips_per_s"]
    return out


def table(report: dict) -> str:
    """The rows as a Markdown table (what benchmarks/README.md shows)."""
    lines = ["| program | dtype | batch | clips/s | median s | TFLOP/s | of bf16 matmul | memory GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['dtype']} | {r['batch']} | {r['error'][:60]} | | | | |")
            continue
        tflops = r.get("achieved_gflops", 0) / 1e3
        lines.append(f"| {r['kind']} | {r['dtype']} | {r['batch']} | {r['clips_per_s']:.4g} | {r['median_s']:.4g} | "
                     f"{tflops:.4g} | {r.get('fraction_of_bf16_matmul', '')} | {r.get('memory_gb', '')} |")
    rates = report["matmul_gflops"]
    lines.append(f"\nmatmul {report['matmul_n']}^3: bf16 {rates['bfloat16'] / 1e3:.4g} TFLOP/s, "
                 f"f32 {rates['float32'] / 1e3:.4g} TFLOP/s; {report.get('device')}; total {report['total_s']} s; "
                 f"Scenic: {report['scenic'].get('status')}; targets: {report['targets']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """`prepare` or `run` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download wheels and copy Scenic's MTV sources (needs network)")
    p.add_argument("--dir", default=str(PREPARED), help="the folder to prepare (ignored by git, carried)")
    p.add_argument("--scenic", default=None, help="a local Scenic checkout (the folder holding scenic/)")
    p.add_argument("--no-wheels", dest="wheels", action="store_false", help="copy Scenic's sources only")
    r = sub.add_parser("run", help="run the benchmark (on the GPU machine; --dry-run on a CPU)")
    r.add_argument("--dir", default=str(PREPARED), help="the prepared folder")
    r.add_argument("--out", default=None, help="write the JSON report here")
    r.add_argument("--dry-run", action="store_true", help="a tiny config and small batches, on the CPU")
    r.add_argument("--config", default=None, help="override the config (default: MTV-B K400; dry run: tiny)")
    r.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; dry run 1,2)")
    r.add_argument("--runs", type=int, default=None, help="timed runs per program (default 5; dry run 2)")
    args = parser.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
