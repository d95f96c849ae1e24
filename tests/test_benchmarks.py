"""The benchmark helpers: the HLO FLOP counter against hand counts, and both scripts end to end, tiny."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import backward_cost, common, inference, train_step
from mtv.layers.encoder_block import EncoderBlock

FIXTURE = "fixtures/scenic_mtv/cva_2view/config.json"


def test_counts_matmul_bias_and_tanh():
    m, k, n = 6, 10, 4
    w, b = tf.ones((k, n)), tf.ones((n,))
    cost = common.xla_flops(lambda x: tf.tanh(tf.matmul(x, w) + b), tf.ones((m, k)))
    assert cost["dot"] == 2 * m * n * k
    assert cost["elementwise"] == m * n  # the bias add
    assert cost["transcendentals"] == m * n
    assert cost["flops"] == 2 * m * n * k + m * n


def test_counts_batched_dot_and_reduce():
    a, b = tf.ones((3, 5, 7)), tf.ones((3, 7, 2))
    cost = common.xla_flops(lambda a, b: tf.reduce_sum(tf.matmul(a, b), axis=-1), a, b)
    assert cost["dot"] == 2 * 3 * 5 * 2 * 7
    assert cost["reduce"] == 3 * 5 * (2 - 1)


def test_counts_strided_conv3d_as_tubelet_matmul():
    x = tf.ones((1, 4, 8, 8, 3))
    kernel = tf.ones((2, 4, 4, 3, 5))  # (t, h, w, in, out), stride = kernel: a tubelet embedding
    cost = common.xla_flops(lambda x: tf.nn.conv3d(x, kernel, strides=(1, 2, 4, 4, 1), padding="VALID"), x)
    out_elements = 2 * 2 * 2 * 5
    assert cost["convolution"] == 2 * out_elements * (2 * 4 * 4 * 3)


def test_encoder_block_flops_match_the_transformer_formula():
    batch_time, length, width, heads = 2, 9, 16, 4
    block = EncoderBlock(heads, 4 * width)
    block.build((1, batch_time, length, width))
    cost = common.xla_flops(lambda x: block(x), tf.ones((1, batch_time, length, width)))
    tokens = batch_time * length
    # q, k, v, out projections (4 d^2) and the MLP (2 x 4 d^2) per token; QK^T and AV per step.
    expected = 2 * tokens * 12 * width ** 2 + 4 * batch_time * length ** 2 * width
    assert cost["dot"] == expected


def test_inference_reports_one_json_line(shared_dir, capsys):
    record = inference.main(["--config", str(shared_dir / FIXTURE), "--runs", "2", "--peak-n", "64"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == record
    assert record["input_shape"] == [1, 8, 32, 32, 3]
    assert len(record["times_s"]) == 2 and record["median_s"] > 0
    for key in ("gflop", "achieved_gflops", "matmul_peak_gflops", "fraction_of_peak", "peak_rss_mb"):
        assert record[key] > 0, key
    assert record["gflop"] >= record["gflop_dot_conv"] > 0
    assert record["fraction_of_peak"] == pytest.approx(record["achieved_gflops"] / record["matmul_peak_gflops"],
                                                       rel=0.01)


def test_inference_short_variant_and_profile(shared_dir, capsys):
    record = inference.main(["--config", str(shared_dir / FIXTURE), "--frames", "4", "--size", "16",
                             "--batch", "2", "--runs", "1", "--no-peak", "--profile"])
    assert record["input_shape"] == [2, 4, 16, 16, 3]
    assert "fraction_of_peak" not in record
    stages = record["stages"]
    assert {"embedding", "encoder_view0", "encoder_view1", "cross_view_blocks",
            "global_encoder_and_head"} <= set(stages)
    # The stages are the whole forward pass, so their FLOPs add up to the model's (rounding aside).
    assert sum(s["gflop"] for s in stages.values()) == pytest.approx(record["gflop"], rel=0.01)
    ops = record["ops"]
    assert ops["op_ms_total"] > 0 and {"attention", "mlp", "layernorm"} <= set(ops["op_ms_by_part"])
    assert any("MatMul" in op_type for op_type in ops["op_ms_by_type"])


def test_train_step_reports_forward_plus_backward(shared_dir):
    tiny = ["--config", str(shared_dir / FIXTURE), "--frames", "4", "--size", "16", "--runs", "1"]
    record = train_step.main(tiny + ["--peak-n", "64"])
    assert record["benchmark"] == "train_step" and record["optimizer"] == "sgd_momentum"
    assert record["input_shape"] == [1, 4, 16, 16, 3]
    assert np.isfinite(record["median_s"]) and record["peak_rss_mb"] > 0 and record["fraction_of_peak"] > 0
    # Backward costs about twice the forward, so a step counts 2-4x the forward alone.
    forward = inference.main(tiny + ["--no-peak"])
    assert 2.0 * forward["gflop"] < record["gflop"] < 4.0 * forward["gflop"]
    assert record["embedding"] == "patchify_matmul"
    assert record["forward_median_s"] > 0
    assert record["step_over_forward"] == pytest.approx(record["median_s"] / record["forward_median_s"], rel=0.02)


def test_train_step_compares_the_conv_embedding_and_profiles_one_step(shared_dir, monkeypatch):
    import mtv.models.mtv_backbone

    module = mtv.models.mtv_backbone  # restored afterwards
    monkeypatch.setattr(module, "embed_patches", module.embed_patches)
    record = train_step.main(["--config", str(shared_dir / FIXTURE), "--frames", "4", "--size", "16", "--runs", "1",
                              "--no-peak", "--no-flops", "--conv-embedding", "--profile"])
    assert record["embedding"] == "conv"
    op_types = set(record["ops"]["op_ms_by_type"])
    assert any("Conv3D" in op for op in op_types), op_types  # the old path really ran


def test_backward_table_matches_gradient_ops_to_their_forward_op():
    events = [("m/embedding_view0/MatMul", "MatMul", 1.0), ("m/mlp/Gelu/mul", "Mul", 0.5),
              ("gradient_tape/m/embedding_view0/MatMul/MatMul_1", "MatMul", 1.5),
              ("gradient_tape/m/embedding_view0/MatMul/MatMul", "MatMul", 0.5),
              ("gradient_tape/m/mlp/Gelu/mul/Mul", "Mul", 20.0)]
    rows = backward_cost.backward_table(events, step_ms=30.0)
    by_op = {r["op"]: r for r in rows}
    assert by_op["m/embedding_view0/MatMul"]["backward_ms"] == 2.0 and by_op["m/embedding_view0/MatMul"]["ratio"] == 2.0
    assert by_op["m/mlp/Gelu/mul"]["ratio"] == 40.0 and by_op["m/mlp/Gelu/mul"]["gradient_ops"] == ["Mul"]
    assert rows[0]["op"] == "m/mlp/Gelu/mul"  # costliest backward first


def test_backward_cost_profiles_a_multimodal_family():
    (record,) = backward_cost.main(["--family", "mm_rgb_flow_audio", "--frames", "4", "--size", "16", "--batch", "2",
                                    "--runs", "1"])
    assert set(record["inputs"]) == {"rgb", "flow", "audio"}
    assert record["step_s"] > 0 and record["forward_s"] > 0
    ops = [r["op"] for r in record["costliest_backward"]]
    assert ops and all(r["backward_ms"] >= 0 for r in record["costliest_backward"]), ops
    assert not any("Conv" in t for r in record["costliest_backward"] for t in r["gradient_ops"])


# ------------------------------------------------------------------------------------ JAX backend, GPU runner
def test_jax_backend_benchmarks_and_the_gpu_runner_dry_run(tmp_path):
    """`train_step.py --backend jax` and `gpu.py run --dry-run`, in one process where TensorFlow cannot be
    imported (the lent GPU machine has none): every program compiles and runs, and the report adds up."""
    import subprocess

    from tests.jax_backend_checks import jax_env

    out = tmp_path / "gpu.json"
    script = ("import json, sys\n"
              "from benchmarks import gpu, train_step\n"
              "step = train_step.main(['--backend', 'jax', '--config', 'configs/camera_motion/camera_motion_tiny.py',"
              " '--runs', '1', '--peak-n', '64'])\n"
              f"gpu.main(['run', '--dry-run', '--batches', '1', '--dir', {str(tmp_path / 'prepared')!r},"
              f" '--out', {str(out)!r}])\n"
              "print('TF_IMPORTED', [m for m in sys.modules if m.startswith('tensorflow')])\n")
    proc = subprocess.run([sys.executable, "-c", script], env=jax_env(tmp_path), capture_output=True, text=True,
                          timeout=600, cwd=str(common.REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TF_IMPORTED []" in proc.stdout
    step = json.loads(next(line for line in proc.stdout.splitlines() if '"benchmark": "train_step"' in line))
    assert step["backend"] == "jax" and step["platform"] == "cpu" and step["input_shape"] == [1, 8, 32, 32, 3]
    assert np.isfinite(step["loss"]) and step["median_s"] > 0 and step["memory_gb"] > 0
    # Backward costs about twice the forward, so a step counts 2-4x the forward alone (XLA's own counts).
    assert 2.0 * step["forward_gflop"] < step["gflop"] < 4.0 * step["forward_gflop"]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["batches"] == [1] and report["platform"] == "cpu"
    rows = {(r["kind"], r["dtype"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(k, d, 1) for k in ("forward", "train_step") for d in ("float32", "bfloat16")}
    for row in rows.values():
        assert "error" not in row, row
        assert row["clips_per_s"] == pytest.approx(1 / row["median_s"], rel=0.01) and row["memory_gb"] > 0
        assert row["fraction_of_bf16_matmul"] == pytest.approx(
            row["achieved_gflops"] / report["matmul_gflops"]["bfloat16"], rel=0.01)
    # The same model in both dtypes: XLA counts (nearly) the same FLOPs; the bf16 plan holds fewer bytes.
    assert rows["forward", "bfloat16", 1]["gflop"] == pytest.approx(rows["forward", "float32", 1]["gflop"], rel=0.2)
    assert report["targets"]["batch"] == 1 and "bf16_forward_fraction" in report["targets"]
    assert report["scenic"]["status"].startswith("skipped")  # no Flax and no Scenic sources here


def test_scenic_sources_are_copied_by_import_closure_and_missing_modules_stood_in(tmp_path, monkeypatch):
    """`gpu.py prepare --scenic` copies only what Scenic's MTV imports; the machine's missing modules are stood in."""
    from benchmarks import gpu, scenic_model

    checkout = tmp_path / "scenic_checkout"
    files = {
        "scenic/__init__.py": "",
        "scenic/projects/__init__.py": "",
        "scenic/projects/mtv/__init__.py": "",
        "scenic/projects/mtv/model.py": (
            "import json\n"
            "import missing_pkg_for_mtv_test as tf\n"
            "from json import missing_module_for_mtv_test\n"
            "KEY = json.MissingAttributeForMtvTest\n"
            "from scenic.model_lib.layers import nn_layers\n"
            "from scenic.projects.mtv import model_utils\n"
            "class Block(tf.Module, dict):\n"
            "    pass\n"
            "class MTV(tf.keras.Model):\n"
            "    @tf.function\n"
            "    def depth(self):\n"
            "        return nn_layers.DEPTH\n"),
        "scenic/projects/mtv/model_utils.py": "def get_input_token_temporal_dims(frames, views):\n"
                                              "    return [frames]\n",
        "scenic/projects/other/unused.py": "raise RuntimeError('never imported')\n",
        "scenic/model_lib/__init__.py": "",
        "scenic/model_lib/layers/__init__.py": "",
        "scenic/model_lib/layers/nn_layers.py": "DEPTH = 3\n",
        "LICENSE": "Apache-2.0\n",
    }
    for rel, text in files.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    prepared = tmp_path / "prepared"
    manifest = gpu.main(["prepare", "--no-wheels", "--scenic", str(checkout), "--dir", str(prepared)])
    assert "scenic/projects/other/unused.py" not in manifest["scenic_files"]
    assert {"scenic/projects/mtv/model.py", "scenic/model_lib/layers/nn_layers.py",
            "scenic/model_lib/layers/__init__.py"} <= set(manifest["scenic_files"])
    assert (prepared / "scenic" / "LICENSE").is_file() and (prepared / "manifest.json").is_file()

    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        model, utils, stand_ins = scenic_model.import_mtv(prepared / "scenic")
        assert stand_ins == ["json.MissingAttributeForMtvTest", "json.missing_module_for_mtv_test",
                             "missing_pkg_for_mtv_test"]
        assert model.MTV().depth() == 3 and utils.get_input_token_temporal_dims(8, []) == [8]
        assert model.Block.__mro__[1] is dict  # a stand-in base class drops out; the real one stays
    finally:
        import json

        if hasattr(json, "MissingAttributeForMtvTest"):
            delattr(json, "MissingAttributeForMtvTest")
        for name in [m for m in sys.modules if m.split(".")[0] in ("scenic", "missing_pkg_for_mtv_test")
                     or m == "json.missing_module_for_mtv_test"]:
            del sys.modules[name]


def test_the_wheel_download_targets_the_gpu_machines_python():
    from benchmarks import gpu

    cmd = gpu.pip_download_command(common.REPO / ".gpu_bench" / "wheels", gpu.pinned())
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux_2_17_x86_64" in cmd
    assert any(arg.startswith("keras==") for arg in cmd) and any(arg.startswith("optree==") for arg in cmd)


def test_the_fusion_benchmark_runs_end_to_end_on_a_tiny_budget(videos_dir, tmp_path):
    """benchmarks/fusion.py (the README's fusion numbers): records, three stream sets, the JSON report."""
    cmd = [sys.executable, str(common.REPO / "benchmarks" / "fusion.py"), f"--videos={videos_dir}",
           f"--workdir={tmp_path}", "--steps=2", "--batch=4", "--lrs=0.1", "--num_train=18", "--num_eval=9"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"rgb", "audio", "rgb+audio", "setup"}
    for name in ("rgb", "audio", "rgb+audio"):
        assert report[name]["picked_lr"] == 0.1 and report[name]["test"]["count"] == 9
        assert 0.0 <= report[name]["test"]["top1"] <= 1.0


def test_the_localization_benchmark_runs_end_to_end_on_a_tiny_budget(videos_dir, tmp_path, capsys):
    """benchmarks/localization.py (the README's localization numbers), in-process: both models, one JSON line."""
    from benchmarks import localization

    report = localization.main([f"--videos={videos_dir}", f"--workdir={tmp_path}", "--steps=2", "--batch=2",
                                "--windows=4", "--train_videos=2", "--eval_videos=1", "--seconds=8"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert set(report) == {"localizer", "sliding_window_baseline", "setup"}
    for name in ("localizer", "sliding_window_baseline"):
        scores = [report[name][k] for k in ("mAP@0.3", "mAP@0.5", "mAP@0.7")]
        assert all(0.0 <= s <= 1.0 for s in scores) and report[name]["mAP"] == pytest.approx(np.mean(scores),
                                                                                               abs=1e-4)
    assert report["setup"]["steps"] == 2 and report["setup"]["windows_per_step"] == 8
    assert (tmp_path / "localizer" / "checkpoints" / "ckpt_00000002.npz").is_file()


def test_the_streaming_benchmark_runs_on_a_tiny_budget(videos_dir):
    """benchmarks/streaming.py (the README's streaming numbers): head training, per-clip held-out top-1, memory."""
    cmd = [sys.executable, str(common.REPO / "benchmarks" / "streaming.py"), f"--videos={videos_dir}",
           "--train-streams=13", "--eval-streams=13", "--clips=2", "--epochs=1", "--minutes", "0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    held = report["heldout"]
    assert held["streams"] == 13 and report["train"]["streams"] == 13 and report["train"]["epochs"] == 1
    for key in ("streaming_top1", "clip_top1", "running_mean_top1"):
        assert len(held[key]) == 2 and all(0.0 <= v <= 1.0 for v in held[key]), (key, held[key])
    assert held["running_mean_top1"][0] == held["clip_top1"][0]  # after one clip the mean is that clip
    (run,) = report["memory"]["runs"]
    # 0.05 min of 2-s clips: 2 clips (rounded) of 9 tokens each into a 16-token memory.
    assert run["clips"] == 2 and run["memory_tokens"] == 16 and run["tokens_absorbed"] == 18.0


def test_the_long_video_benchmark_decodes_the_views_not_the_video(tmp_path, capsys):
    """benchmarks/long_video.py (the README's long-video numbers) on a 4-s 160x96 video: one child, one JSON line."""
    from benchmarks import long_video

    report = long_video.main(["--seconds", "4", "--width", "160", "--height", "96", "--gop", "1",
                              f"--cache-dir={tmp_path}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    (row,) = report["videos"]
    assert (tmp_path / "pan_4s_160x96_30fps_g1.mp4").is_file() and not list(tmp_path.glob(".*tmp"))
    seek = row["seek"]
    # 4x3 views of the embedded model (16 frames, stride 1): 4 clips of 16 frames decoded out of 120.
    assert seek["num_frames"] == 120 and seek["num_frames_decoded"] == 4 * 16
    assert seek["peak_rss_mb"] >= seek["rss_after_model_mb"] > 0 and seek["seconds"] > 0
