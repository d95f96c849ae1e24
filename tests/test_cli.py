"""The `mtv` dispatcher: one flag style, old dashed spellings for one release, the bundled sample, quiet output."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import av
import pytest
from absl import flags

import mtv.data
from mtv.cli import COMMANDS, canonical_flag_spellings, run
from mtv.cli.quiet import NOISE


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_name_uses_underscores(command):
    fv = importlib.import_module(COMMANDS[command]).FLAGS
    dashed = [name for name in fv if "-" in name]
    assert not dashed, f"mtv {command}: flags {dashed} should be spelt with underscores"


def test_old_dashed_spellings_are_rewritten_with_a_warning(capsys):
    fv = flags.FlagValues()
    flags.DEFINE_string("video_root", None, "", flag_values=fv)
    flags.DEFINE_bool("allow_pickle", False, "", flag_values=fv)
    args = ["a.csv", "--video-root", "--not-a-flag", "--allow-pickle", "--noallow-pickle", "-video-root=x",
            "--unknown-flag", "--", "--video-root"]
    assert canonical_flag_spellings(fv, args, "mtv test") == [
        "a.csv", "--video_root", "--not-a-flag", "--allow_pickle", "--noallow_pickle", "-video_root=x",
        "--unknown-flag", "--", "--video-root"]  # a flag's value, unknown names and anything after -- stay
    err = capsys.readouterr().err
    assert "mtv test: warning: --video-root is deprecated" in err and "use --video_root" in err
    assert "--noallow-pickle is deprecated" in err and "use --noallow_pickle" in err
    assert "--unknown-flag" not in err


def test_a_dashed_flag_still_works_through_the_cli(capsys, monkeypatch, tmp_path):
    import mtv.io.loading

    calls = []
    monkeypatch.setattr(mtv.io.loading, "fetch_preset",
                        lambda name, *, from_file=None, progress=True: calls.append(from_file) or tmp_path)
    assert run(["zoo", "fetch", "mtv-b-k400", "--from-file", "/data/checkpoint_1"]) == 0
    assert calls == ["/data/checkpoint_1"]
    err = capsys.readouterr().err
    assert "mtv zoo: warning: --from-file is deprecated" in err and "use --from_file" in err
    assert run(["zoo", "fetch", "mtv-b-k400", "--from_file", "/data/checkpoint_2"]) == 0
    assert calls[-1] == "/data/checkpoint_2" and "deprecated" not in capsys.readouterr().err


def test_sample_video_is_a_real_clip_with_sound_and_its_licence():
    path = mtv.data.sample_video()
    assert path.is_file() and path.stat().st_size < 1_000_000
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio
        assert container.duration / av.time_base > 10  # seconds
    sources = (path.parent / "SOURCES.md").read_text()
    assert path.name in sources and "Apache-2.0" in sources and "dmlc/decord" in sources
    assert "Apache License" in (path.parent / "LICENSE-Apache-2.0.txt").read_text()


def _quiet_env() -> dict:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it for this process; the CLI must not need it
    return env


def test_predict_without_a_video_labels_the_sample_without_tensorflow_noise(tmp_path):
    cmd = [sys.executable, "-m", "mtv.cli", "predict", "--views", "1x1", "--top", "3", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_quiet_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    sample = str(mtv.data.sample_video())
    # Besides the notice, only the log line saying that the Matroska sample's frames were counted (no count stored).
    lines = [line for line in proc.stderr.splitlines() if "gives no frame count; counted" not in line]
    assert lines == [f"no video given: labelling the bundled sample {sample}"], proc.stderr
    result = json.loads(proc.stdout)
    assert result["video"] == sample and result["model"] == "camera-motion"
    assert len(next(iter(result["heads"].values()))) == 3


def test_verbose_lets_tensorflow_start_up_messages_through(tmp_path):
    cmd = [sys.executable, "-m", "mtv.cli", "predict", "--verbose", "--views", "1x1", "--top", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_quiet_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert any(NOISE.fullmatch(line) for line in proc.stderr.splitlines()), proc.stderr
