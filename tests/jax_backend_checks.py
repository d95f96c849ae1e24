"""The JAX side of tests/test_jax_backend.py, run in ONE subprocess with KERAS_BACKEND=jax and TensorFlow
unimportable: `python tests/jax_backend_checks.py IN_DIR OUT_DIR`.

IN_DIR holds what the TensorFlow side wrote (inputs.json names the files); OUT_DIR gets what this side
computed (results.npz, results.json, a .keras file, a preset and a Scenic msgpack), which the test compares
with TensorFlow's. One process for every check, so JAX compiles each op shape once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Written as sitecustomize.py into a folder put first on PYTHONPATH: `import tensorflow` then fails as on a machine
# where it is not installed (it is installed here, for the TensorFlow side of the tests).
NO_TENSORFLOW = '''import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_hub", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


def jax_env(tmp: Path) -> dict:
    """The environment of a JAX subprocess: KERAS_BACKEND=jax, TensorFlow unimportable, a private cache."""
    import os

    block = tmp / "no_tensorflow"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(NO_TENSORFLOW)
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(block), str(repo)]),
            "MTV_CACHE_DIR": str(tmp / "cache"), "JAX_PLATFORMS": "cpu",
            # Unoptimised XLA compiles several times faster; the tiny test models run in milliseconds anyway.
            "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def _logits(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def _compiled_during(fn):
    """(fn(), names of the functions JAX compiled meanwhile), read off JAX's compile log."""
    import logging

    import jax

    names: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "XLA compilation of " in message:
                names.append(message.split("XLA compilation of ")[1].split()[0])

    handler, logger = Collect(), logging.getLogger("jax")
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        return fn(), names
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)


def _cli(argv: list[str]) -> list:
    """[exit status, stderr] of `mtv ARGV` run in this process."""
    import contextlib
    import io

    from mtv.cli import run

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run(argv)
    return [code, err.getvalue()]


def main(in_dir: Path, out_dir: Path) -> None:
    spec = json.loads((in_dir / "inputs.json").read_text())
    times: dict[str, float] = {}
    start = time.time()

    def tick(name: str) -> None:
        nonlocal start
        times[name] = round(time.time() - start, 2)
        start = time.time()

    import keras

    import mtv
    from mtv.errors import MissingDependencyError
    from mtv.io.loading import load
    from mtv.io.presets import load_preset, save_preset

    arrays: dict[str, np.ndarray] = {}
    info: dict = {"backend": keras.backend.backend()}
    tick("import")

    # 1. Scenic parity: the public fixture, Scenic's weights, through from_scenic (which draws no random numbers:
    # on JAX each draw would compile a kernel per weight shape).
    model, info["from_scenic_compiled"] = _compiled_during(
        lambda: mtv.from_scenic(spec["scenic_config"], spec["scenic_params"]))
    x = np.load(spec["scenic_input"])
    arrays["from_scenic"] = _logits(model, x)
    tick("from_scenic + first forward")

    # 2. Saved under TensorFlow, loaded here.
    arrays["tf_keras"] = _logits(load(spec["tf_keras"]), x)
    arrays["tf_preset"] = _logits(load_preset(spec["tf_preset"]), x)
    tick("load TF .keras + preset")

    # 3. Saved here, loaded under TensorFlow by the test; and back to Scenic's format.
    model.save(out_dir / "jax.keras")
    save_preset(model, out_dir / "jax_preset", metadata={"saved_by": "jax"})
    mtv.to_scenic(model, out_dir / "jax_scenic.msgpack")
    info["build_model_params"] = mtv.build_model(spec["tiny_config"], seed=0).count_params()
    info["embedded_preset_classes"] = len(mtv.load("camera-motion").metadata["class_names"])
    tick("save .keras/preset/msgpack, build_model, embedded preset")

    # 4. mtv.predict on a real video: decode, NumPy preprocessing, model; 2 views in one batch of 2 reuses the
    # op shapes compiled above.
    info["predict"] = mtv.predict(spec["video"], model=spec["tf_preset"], views="2x1", batch_size=2, top=5)
    tick("predict")

    # 5. Training steps of the tiny config with Scenic's optimizer, from TensorFlow's initial weights.
    arrays.update(train_steps(spec))
    tick("train steps")

    # 6. README's "From JAX" example, as written (it writes checkpoint_1 into the working directory).
    info["readme"] = _readme_example(out_dir)
    tick("README example")

    try:
        mtv.export  # noqa: B018  (the attribute access is the check)
    except MissingDependencyError as err:
        info["export_error"] = str(err)
    info["cli"] = {"export": _cli(["export", "camera-motion", str(out_dir / "saved_model")]),
                   "train": _cli(["train", "--help"])}
    info["tensorflow_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
    info["times"] = times
    np.savez(out_dir / "results.npz", **arrays)
    (out_dir / "results.json").write_text(json.dumps(info, indent=1, default=str))


def readme_block(section: str = "## From JAX") -> str:
    """The first ```python block of README.md's `section`."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    body = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def _readme_example(out_dir: Path) -> dict:
    import os

    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(out_dir)
    try:
        exec(compile(readme_block(), "README.md (From JAX)", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    model = namespace["model"]
    np.savez(out_dir / "readme_weights.npz", **{k: np.asarray(v) for k, v in model.flax_params().items()})
    sums = np.asarray(namespace["probabilities"]).sum(-1)
    return {"loss": float(namespace["loss"]), "probability_sums": sums.tolist(),
            "params_top": sorted(namespace["params"])}


def train_steps(spec: dict) -> dict[str, np.ndarray]:
    """`spec['train_steps']` steps of the trainer's TrainingModel + ScenicMomentum, compiled as `mtv train`
    compiles them, from the weights and on the batch the TensorFlow side wrote (the same code runs there)."""
    from mtv.io.presets import load_preset
    from mtv.training.backend import jit_compile
    from mtv.training.losses import TrainingModel
    from mtv.training.optimizer import ScenicMomentum

    model = load_preset(spec["train_initial"])
    batch = np.load(spec["train_batch"])
    wrapper = TrainingModel(model, ["label"])
    wrapper.compile(optimizer=ScenicMomentum(**spec["optimizer"]), jit_compile=jit_compile({}))
    losses = [float(np.asarray(wrapper.train_on_batch(batch["x"], batch["y"], return_dict=True)["loss"]))
              for _ in range(spec["train_steps"])]
    out = {f"trained/{k}": np.asarray(v) for k, v in model.flax_params().items()}
    out["train_losses"] = np.asarray(losses)
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
