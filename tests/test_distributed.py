"""tf.distribute: two mirrored replicas and two worker processes follow the one-replica loss curve.

The global batch is split across replicas and the gradient is clipped after the replicas' gradients
are summed, so with clipping active (a small max_grad_norm) the curves still agree. TPUStrategy cannot
be exercised here (no TPU); only its error without one is checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtv.errors import ConfigError
from mtv.io.configs import load_config
from mtv.training import checkpoints as ckpt_lib
from mtv.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"
OVERRIDES = {"num_training_steps": 6, "checkpoint_steps": 6, "batch_size": 8, "max_grad_norm": 0.05,
             "lr_configs.steps_per_cycle": 6, "lr_configs.warmup_steps": 2, "lr_configs.base_learning_rate": 0.3,
             "dataset_configs.synthetic.num_eval": 13}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _args(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtv.cli", "train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=0",
            *[f"--config.{k}={v}" for k, v in OVERRIDES.items()], *extra]


def _losses(workdir: Path) -> list[float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    return [x["loss"] for x in lines]


@pytest.fixture(scope="module")
def one_replica(tmp_path_factory):
    config = load_config(str(TINY))
    for key, value in OVERRIDES.items():
        *path, leaf = key.split(".")
        target = config
        for part in path:
            target = target[part]
        target[leaf] = value
    workdir = tmp_path_factory.mktemp("one_replica")
    result = train(config, workdir)
    losses = [s["loss"] for s in result.history]
    assert len(set(np.round(losses, 4))) > 3  # the curve moves, so agreeing with it means something
    return workdir, losses


def _params(workdir: Path) -> dict:
    return ckpt_lib.read_params(ckpt_lib.latest_checkpoint(workdir))


def _assert_same_run(workdir: Path, reference: Path, losses: list[float]) -> None:
    np.testing.assert_allclose(_losses(workdir), losses, rtol=1e-4, atol=1e-5)
    ours, ref = _params(workdir), _params(reference)
    for key in ("output_projection/kernel", "embedding_view1/kernel", "global_encoder/encoder_norm/scale"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-3, atol=1e-5)


def _outputs(procs: list[subprocess.Popen], reference_run) -> tuple:
    """Runs `reference_run()` while the subprocesses run; then their outputs, each checked to have succeeded."""
    try:
        reference = reference_run()
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    return reference, outputs


# Where the time goes (CPU seconds, measured): `mtv train` runs in a fresh process because logical CPU
# devices can only be configured before TensorFlow initialises, which the pytest process has done; that
# costs ~5 s of imports. Tracing the train step once per replica (Keras traces the model in each
# replica's thread, and the optimizer update for every variable on every device) and optimising the
# two-device graph cost ~16 s for the first step; the other 5 steps ~0.1 s each. The subprocesses are
# started before the in-process reference run is requested, so on two cores the two overlap.
def test_two_mirrored_replicas_match_one(tmp_path, request):
    proc = subprocess.Popen(_args(tmp_path / "mirrored", "--cpu_replicas=2"), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (reference, losses), _ = _outputs([proc], lambda: request.getfixturevalue("one_replica"))
    _assert_same_run(tmp_path / "mirrored", reference, losses)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_match_one_replica(tmp_path, request):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    workdir = tmp_path / "multi_worker"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(_args(workdir, "--strategy=multi_worker"), cwd=REPO,
                                      env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    (reference, losses), outputs = _outputs(procs, lambda: request.getfixturevalue("one_replica"))
    _assert_same_run(workdir, reference, losses)  # only the chief (worker 0) wrote the logs and checkpoints
    assert "step 6/6" in outputs[1]


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    from mtv.training.strategy import make_strategy

    with pytest.raises(ConfigError, match="tpu"):
        make_strategy("tpu")  # no local TPU here; a remote address would need a reachable TPU worker
