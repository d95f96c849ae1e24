"""`mtv convert`, `mtv export` and the dispatcher, run in-process."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtv.cli import run
from mtv.io import flax_msgpack
from tests.conftest import needs_shared
from tests.helpers import FIXTURE, fixture_input

pytestmark = needs_shared  # every test here uses the Scenic fixture from ../shared
LOGITS = np.load(FIXTURE / "logits.npy") if FIXTURE.is_dir() else None


def test_convert_to_preset_and_back_to_scenic(tmp_path, capsys):
    config, params = str(FIXTURE / "config.json"), str(FIXTURE / "params.npz")
    assert run(["convert", params, "--out", str(tmp_path / "p")]) == 1
    assert "--config is required" in capsys.readouterr().err
    assert run(["convert", params, "--config", config, "--out", str(tmp_path / "p")]) == 0
    assert "59,789 params" in capsys.readouterr().out
    assert (
        run(
            [
                "convert",
                str(tmp_path / "p"),
                "--to_scenic",
                "--layout",
                "flax_optim",
                "--out",
                str(tmp_path / "checkpoint_0"),
            ]
        )
        == 0
    )
    back = flax_msgpack.flatten(flax_msgpack.extract_params(flax_msgpack.read_state(tmp_path / "checkpoint_0")))
    want = dict(np.load(params))
    assert set(back) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(back[key], value)


def test_export_command_writes_a_servable_model(tmp_path, capsys):
    args = ["export", str(FIXTURE / "params.npz"), str(tmp_path / "saved"), "--config", str(FIXTURE / "config.json")]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "signature serving_default(frames)" in out and "signature serving_uint8(frames)" in out
    assert "function alias tpu_candidate: serving_default" in out
    out = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"](
        frames=tf.constant(fixture_input())
    )
    np.testing.assert_allclose(out["logits"].numpy(), LOGITS, atol=1e-5)
    assert run(args) == 1  # the directory now exists and is not empty
    assert "not empty" in capsys.readouterr().err


def test_dispatcher_usage_and_unknown_command(capsys):
    assert run([]) == 2
    assert run(["predcit"]) == 2
    assert "did you mean 'predict'" in capsys.readouterr().err
    assert run(["--help"]) == 0
    assert "epic-score" in capsys.readouterr().out
