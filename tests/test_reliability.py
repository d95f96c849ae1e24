"""What mtv guarantees on bad configs, file-system failures and input outside its domain (issue 13, items 5-12).

Each test is one guarantee: the failure is a named MTVError that names the path or field and says what to
do, and nothing is left behind that a later run would trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtv.cli import run
from mtv.errors import ConfigError
from mtv.io.configs import load_config
from mtv.training import checkpoints as ckpt_lib
from mtv.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"


def _tiny(**changes):
    """The tiny camera-motion config, 2 steps of batch 2, with dotted-path changes."""
    config = load_config(str(TINY))
    config.num_training_steps, config.checkpoint_steps, config.batch_size = 2, 2, 2
    config.lr_configs.steps_per_cycle, config.lr_configs.warmup_steps = 2, 1
    config.dataset_configs.synthetic.num_eval = 13
    for key, value in changes.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


# ------------------------------------------------------------------ item 6: bad --config files and overrides
BAD_CONFIGS = {
    "import_error": ("bad.py", "import not_a_module_of_anyone\n", "No module named 'not_a_module_of_anyone'"),
    "syntax_error": ("bad.py", "def get_config(:\n", "SyntaxError"),
    "no_get_config": ("bad.py", "x = 1\n", "must define get_config()"),
    "not_a_config": ("bad.py", "def get_config():\n    return 5\n", "must return an ml_collections.ConfigDict"),
    "json_list": ("bad.json", "[1, 2]\n", "must hold an object"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_train_with_a_broken_config_file_prints_a_clean_error_naming_the_file(tmp_path, capsys, case):
    name, text, expected = BAD_CONFIGS[case]
    path = tmp_path / name
    path.write_text(text)
    assert run(["train", f"--config={path}", f"--workdir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtv train: error: ") and str(path) in err and expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expected", [
    ("--config.num_training_step=5", "the config has no field 'num_training_step' "
                                     "(did you mean 'num_training_steps'?)"),
    ("--config.dataset_configs.num_frame=5", "config.dataset_configs has no field 'num_frame' "
                                             "(did you mean 'dataset_configs.num_frames'?)"),
])
def test_a_misspelt_config_override_is_refused_with_did_you_mean(tmp_path, capsys, override, expected):
    assert run(["train", f"--config={TINY}", f"--workdir={tmp_path / 'run'}", override]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtv train: error: ") and expected in err and "Traceback" not in err


# ------------------------------------------------------------------ item 8: resuming with a changed config
def test_resuming_a_workdir_with_a_changed_config_is_refused_listing_the_changes(tmp_path, capsys):
    workdir = tmp_path / "run"
    train(_tiny(), workdir)
    recorded = (workdir / "config.json").read_text()
    changed = _tiny(batch_size=4, num_training_steps=4, **{"lr_configs.base_learning_rate": 0.5})
    with pytest.raises(ConfigError) as info:
        train(changed, workdir)
    message = str(info.value)
    assert "batch_size: 2 -> 4" in message and "lr_configs.base_learning_rate: 0.1 -> 0.5" in message
    assert "--allow_config_change" in message and "model" not in message
    assert (workdir / "config.json").read_text() == recorded
    assert [s for s, _ in ckpt_lib.list_checkpoints(workdir)] == [2]
    # the same through the command line
    args = ["train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=0", "--config.batch_size=2",
            "--config.num_training_steps=2", "--config.checkpoint_steps=2", "--config.lr_configs.steps_per_cycle=2",
            "--config.lr_configs.warmup_steps=1", "--config.dataset_configs.synthetic.num_eval=13",
            "--config.model.classifier=gap"]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert 'model.classifier: "token" -> "gap"' in err and "Traceback" not in err
    assert (workdir / "config.json").read_text() == recorded


def test_an_allowed_config_change_resumes_and_is_recorded_in_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    train(_tiny(), workdir)
    old = json.loads((workdir / "config.json").read_text())
    result = train(_tiny(num_training_steps=4, **{"lr_configs.steps_per_cycle": 4}), workdir,
                   allow_config_change=True)
    assert result.start_step == 2 and result.step == 4
    assert json.loads((workdir / "config.json").read_text())["num_training_steps"] == 4
    assert json.loads((workdir / "config.before_step_2.json").read_text()) == old
    assert train(_tiny(num_training_steps=4, **{"lr_configs.steps_per_cycle": 4}), workdir).step == 4


# ------------------------------------------------------------------ item 7: unknown fields outside `model`
@pytest.mark.parametrize("field, value, expected", [
    ("batch_szie", 4, "batch_szie is not a config field (did you mean 'batch_size'?)"),
    ("dataset_configs.num_frame", 8, "dataset_configs.num_frame is not a config field "
                                     "(did you mean 'dataset_configs.num_frames'?)"),
    ("dataset_configs.augmentation_params.do_jiter_scale", True, "(did you mean "
                                                                 "'dataset_configs.augmentation_params.do_jitter_scale'?)"),
])
def test_a_misspelt_config_field_anywhere_is_refused_before_training(tmp_path, field, value, expected):
    import ml_collections

    config = _tiny()
    if field.endswith("do_jiter_scale"):
        config.dataset_configs.augmentation_params = ml_collections.ConfigDict()
    target = config
    *path, leaf = field.split(".")
    for part in path:
        target = target[part]
    target[leaf] = value
    with pytest.raises(ConfigError) as info:
        train(config, tmp_path / "run")
    assert expected in str(info.value)
    assert not (tmp_path / "run").exists()


def test_scenic_fields_mtv_does_not_use_are_accepted_and_other_unknown_fields_are_warned_about():
    from mtv.io.configs import check_config_fields

    config = _tiny(trainer_name="mtv_trainer", xprof=True, my_sweep_tag="a")
    config.dataset_configs.prefetch_to_device = 2
    assert check_config_fields(config) == ["my_sweep_tag"]


@pytest.mark.parametrize("name", sorted(__import__("mtv.io.configs", fromlist=["x"]).list_configs()))
def test_every_shipped_config_loads_with_no_unknown_field(name):
    from mtv.io.configs import check_config_fields

    assert check_config_fields(load_config(name)) == []


# ------------------------------------------------------------------ item 11: text files are not videos
def _notes(path: Path) -> Path:
    """A text file long enough that FFmpeg's 'tty' demuxer renders it into frames."""
    path.write_text("".join(f"Meeting notes line {i}: discuss the plan for training models.\n" for i in range(200)))
    return path


def test_a_text_file_is_refused_as_a_video_with_a_data_error(tmp_path):
    from mtv.data.video import read_video
    from mtv.errors import DataError

    notes = _notes(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"notes.txt' is not a video: FFmpeg reads it as text \(demuxer 'tty'"):
        read_video(notes)


def test_data_prepare_skips_and_counts_text_files(tmp_path, capsys):
    from tests.data.synthetic import level_frames, write_video

    write_video(tmp_path / "clip.mp4", level_frames([0, 80, 160, 240]))
    _notes(tmp_path / "notes.txt")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\nclip.mp4,0\nnotes.txt,1\n")
    assert run(["data", "prepare", str(csv_path), "--out", str(tmp_path / "out"), "--num_classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 examples" in out and "skipped 1 unreadable video(s)" in out and "is not a video" in out


# ------------------------------------------------------------------ item 12: class count and duplicates
def test_data_prepare_takes_the_class_count_from_a_class_list_or_config(tmp_path, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\nclip.mp4,13\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"class {i}\n" for i in range(13)))
    out = str(tmp_path / "out")
    assert run(["data", "prepare", str(csv_path), "--out", out, f"--classes={classes}"]) == 1
    assert "label 13 is outside [0, 13)" in capsys.readouterr().err
    assert run(["data", "prepare", str(csv_path), "--out", out, f"--config={TINY}"]) == 1
    assert "label 13 is outside [0, 13)" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.mark.parametrize("second, expected", [
    ("clip.mp4,1", "train.csv:3: this row has the same id as line 2 (id 'clip')"),
    ("clip.mp4,0", "train.csv:3: this row repeats line 2 (id 'clip')"),
])
def test_data_prepare_refuses_duplicate_ids_and_rows(tmp_path, capsys, second, expected):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(f"path,label\nclip.mp4,0\n{second}\n")
    assert run(["data", "prepare", str(csv_path), "--out", str(tmp_path / "out"), "--num_classes", "2"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "unique id" in err
