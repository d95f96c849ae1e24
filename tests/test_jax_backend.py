"""mtv on Keras' JAX backend, in a process where TensorFlow cannot be imported (issue 14).

One subprocess (tests/jax_backend_checks.py, KERAS_BACKEND=jax, `import tensorflow` failing as on a machine
without it) does every JAX-side check; this module, on the TensorFlow backend, prepares its inputs and compares:
Scenic parity, `.keras` files and presets saved under one backend and loaded under the other, `to_scenic`,
`mtv.predict` on a real video, training steps of the tiny config with Scenic's optimizer, and the errors of the
TensorFlow-only features.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import mtv
from mtv.data import preprocessor as pre
from mtv.io.presets import load_preset, save_preset
from mtv.io.scenic import load_flat_params
from tests.helpers import FIXTURE, fixture_input, fixture_logits, fixture_model
from tests.jax_backend_checks import jax_env, train_steps

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
VIDEO = "arm_wrestling__mmaction2_demo.mp4"
LABELS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def _train_spec(tmp: Path) -> dict:
    """Initial weights, a batch and optimizer settings for the training-step comparison (dropout is off in TINY)."""
    model = mtv.build_model(str(TINY), seed=0)
    save_preset(model, tmp / "train_initial")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, *model.input_shapes["rgb"])).astype(np.float32)
    y = np.eye(model.spec["num_classes"], dtype=np.float32)[rng.integers(0, model.spec["num_classes"], 8)]
    np.savez(tmp / "train_batch.npz", x=x, y=y)
    # A large learning rate, clipping and L2 decay so that every part of the recipe moves the weights; two steps
    # so that the momentum of the first enters the second.
    return {"train_initial": str(tmp / "train_initial"), "train_batch": str(tmp / "train_batch.npz"),
            "train_steps": 2,
            "optimizer": {"learning_rate": 0.5, "momentum": 0.9, "global_clipnorm": 1.0, "l2_decay_factor": 1e-3}}


@pytest.fixture(scope="module")
def jax_side(tmp_path_factory, videos_dir):
    """(spec, arrays, info, out_dir): what the JAX subprocess computed from the TensorFlow side's files."""
    if importlib.util.find_spec("jax") is None:
        pytest.fail("jax is not installed: `pip install -e '.[test]'` (the test extra pulls jax) or '.[jax]'")
    tmp = tmp_path_factory.mktemp("jax_backend")
    in_dir, out_dir = tmp / "in", tmp / "out"
    for folder in (in_dir, out_dir):
        folder.mkdir()
    model = fixture_model()
    model.save(in_dir / "tf.keras")
    save_preset(model, in_dir / "tf_preset", metadata={
        "class_names": LABELS, "stride": 2, "preprocessing": {"min_resize": 36, "crop_size": 32}})
    spec = {"scenic_config": str(FIXTURE / "config.json"), "scenic_params": str(FIXTURE / "params.npz"),
            "scenic_input": str(FIXTURE / "input.npy"), "tf_keras": str(in_dir / "tf.keras"),
            "tf_preset": str(in_dir / "tf_preset"), "tiny_config": str(TINY), "video": str(videos_dir / VIDEO),
            **_train_spec(in_dir)}
    (in_dir / "inputs.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "jax_backend_checks.py"), str(in_dir), str(out_dir)],
                          env=jax_env(tmp), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((out_dir / "results.json").read_text())
    print("JAX subprocess times (s):", info["times"])
    with np.load(out_dir / "results.npz") as data:
        arrays = dict(data)
    return spec, arrays, info, out_dir


def test_the_model_path_runs_on_jax_without_tensorflow(jax_side):
    _, _, info, _ = jax_side
    assert info["backend"] == "jax"
    assert info["tensorflow_imported"] == []
    assert info["build_model_params"] == mtv.build_model(str(TINY), seed=0).count_params()
    assert info["embedded_preset_classes"] == 13
    # Loading compiles no random initialiser (what made a load take tens of seconds on JAX).
    compiled = info["from_scenic_compiled"]
    assert compiled, "JAX's compile log was not read"  # loading still compiles small copies (jit(stage))
    assert not [n for n in compiled if "uniform" in n or "normal" in n], compiled
    # The TensorFlow-only features say what needs TensorFlow instead of failing deep inside an import.
    assert "mtv.export" in info["export_error"] and "needs TensorFlow" in info["export_error"]
    for command, (code, err) in info["cli"].items():
        assert code == 1 and f"`mtv {command}` needs TensorFlow" in err and "Traceback" not in err, (command, err)


def test_jax_gives_scenics_logits_on_the_public_fixture(jax_side):
    _, arrays, _, _ = jax_side
    np.testing.assert_allclose(arrays["from_scenic"], fixture_logits(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(arrays["from_scenic"], np.asarray(fixture_model()(fixture_input())), atol=1e-5, rtol=0)


def test_keras_files_presets_and_scenic_checkpoints_cross_backends(jax_side):
    _, arrays, _, out_dir = jax_side
    x = fixture_input()
    want = np.asarray(fixture_model()(x))
    # TensorFlow -> JAX.
    np.testing.assert_allclose(arrays["tf_keras"], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(arrays["tf_preset"], want, atol=1e-5, rtol=0)
    # JAX -> TensorFlow.
    np.testing.assert_allclose(np.asarray(mtv.load(out_dir / "jax.keras")(x)), want, atol=1e-5, rtol=0)
    back = load_preset(out_dir / "jax_preset")
    assert back.metadata == {"saved_by": "jax"}
    np.testing.assert_allclose(np.asarray(back(x)), want, atol=1e-5, rtol=0)
    # JAX -> Scenic: to_scenic writes the fixture's own parameters back.
    written, original = load_flat_params(out_dir / "jax_scenic.msgpack"), load_flat_params(FIXTURE / "params.npz")
    assert set(written) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key].astype(value.dtype), value, err_msg=key)


def test_predict_on_jax_gives_tensorflows_labels(jax_side):
    spec, _, info, _ = jax_side
    got = info["predict"]
    want = mtv.predict(spec["video"], model=spec["tf_preset"], views="2x1", batch_size=2, top=5)
    assert got["views"] == want["views"] == "2x1" and got["num_frames_decoded"] == want["num_frames_decoded"]
    assert [r["label"] for r in got["heads"]["logits"]] == [r["label"] for r in want["heads"]["logits"]]
    np.testing.assert_allclose([r["probability"] for r in got["heads"]["logits"]],
                               [r["probability"] for r in want["heads"]["logits"]], atol=1e-5, rtol=0)


def test_training_steps_on_jax_match_tensorflow(jax_side):
    spec, arrays, _, _ = jax_side
    want = train_steps(spec)  # the same code, on this (TensorFlow) side
    np.testing.assert_allclose(arrays["train_losses"], want["train_losses"], rtol=1e-5)
    initial = load_preset(spec["train_initial"]).flax_params()
    moved = max(float(np.abs(want[f"trained/{k}"] - np.asarray(v)).max()) for k, v in initial.items())
    assert moved > 1e-2  # the steps changed the weights: the comparison below is not of untouched weights
    for key in initial:
        got, ref = arrays[f"trained/{key}"], want[f"trained/{key}"]
        # float32 round-off: a few ulps of the weights, far below the 1e-2 the steps moved them.
        np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("min_resize, crops", [(36, 3), (36, 1), (300, 3)])  # down- and upsampling
def test_numpy_preprocessing_gives_tensorflows_bytes(videos_dir, min_resize, crops):
    """`mtv.predict` preprocesses with NumPy (no TensorFlow needed); evaluation's tf.data graph with TF ops."""
    from mtv.data.video import load_video

    frames = load_video(videos_dir / VIDEO, with_audio=False).frames[:6]  # 340x256 real frames
    clips = frames.reshape(2, 3, *frames.shape[1:])
    kwargs = dict(crop_size=32 if min_resize == 36 else 288, min_resize=min_resize, num_crops=crops)
    from_numpy = pre.preprocess(clips, **kwargs)
    assert isinstance(from_numpy, np.ndarray)
    np.testing.assert_array_equal(from_numpy, pre.preprocess(tf.constant(clips), **kwargs).numpy())
    flow = np.random.default_rng(0).uniform(-1, 1, (1, 2, 50, 70, 2)).astype(np.float32)
    np.testing.assert_array_equal(pre.preprocess(flow, is_flow=True, **kwargs),
                                  pre.preprocess(tf.constant(flow), is_flow=True, **kwargs).numpy())



def test_the_readmes_from_jax_example_runs_and_hands_its_weights_to_scenic(jax_side):
    """README "From JAX": load a zoo model, jit it, fine-tune one step, `to_scenic` (run as written, without TF)."""
    _, _, info, out_dir = jax_side
    readme = info["readme"]
    assert np.isfinite(readme["loss"]) and np.allclose(readme["probability_sums"], 1.0, atol=1e-5)
    assert {"MultiviewEncoder", "global_encoder", "output_projection"} <= set(readme["params_top"])
    # The Flax checkpoint it wrote holds the fine-tuned weights, which differ from the zoo model's.
    written = load_flat_params(out_dir / "checkpoint_1")
    with np.load(out_dir / "readme_weights.npz") as tuned:
        assert set(written) == set(tuned.files)
        for key in tuned.files:
            np.testing.assert_array_equal(written[key], tuned[key], err_msg=key)
        before = mtv.load("camera-motion").flax_params()
        assert max(float(np.abs(tuned[k] - np.asarray(v)).max()) for k, v in before.items()) > 0


_LEARN = """
import json, sys
from mtv.io.configs import load_config
from mtv.training.trainer import train
config = load_config(sys.argv[1])
config.dataset_configs.synthetic.videos = sys.argv[2]
result = train(config, sys.argv[3])
import keras
print(json.dumps({"backend": keras.backend.backend(), "step": result.step, **result.eval}))
"""


def test_the_tiny_mtv_learns_camera_motion_on_jax_too(videos_dir, tmp_path):
    """Issue 14: the 'it learns' test of tests/test_train.py, on Keras' JAX backend (tf.data still reads the data)."""
    import os

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "MTV_CACHE_DIR": str(tmp_path / "cache")}
    tiny = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
    proc = subprocess.run([sys.executable, "-c", _LEARN, str(tiny), str(videos_dir), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["step"] == 400
    assert result["accuracy"] > 4 * 100.0 / 13, result  # chance is 1/13, as in test_train.py
