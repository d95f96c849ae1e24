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
from tests.test_train import _tiny as train_tiny

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "camera_motion" / "camera_motion_tiny.py"


def _tiny(**changes):
    """test_train's tiny camera-motion config (2 steps of batch 2) with 13 held-out clips, plus `changes`."""
    return train_tiny(**{"dataset_configs.synthetic.num_eval": 13, **changes})


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
    before = _tiny().lr_configs.base_learning_rate
    assert "batch_size: 2 -> 4" in message and f"lr_configs.base_learning_rate: {before} -> 0.5" in message
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


# ------------------------------------------------------------------ item 9: checkpoints that do not fit the request
def _fixture_config(tmp_path: Path, **changes) -> Path:
    """A copy of the cva_2view fixture's config.json with top-level (or dataset_meta_data) changes."""
    from tests.conftest import require_shared
    from tests.helpers import FIXTURE

    require_shared()
    data = json.loads((FIXTURE / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_a_checkpoint_head_that_disagrees_with_the_config_is_an_error_unless_num_classes_is_passed(tmp_path):
    import mtv
    from mtv.errors import CheckpointError
    from tests.helpers import FIXTURE

    config = _fixture_config(tmp_path, dataset_meta_data={"num_classes": 13})
    with pytest.raises(CheckpointError, match=r"head \(output_projection\) has 5 classes but the config says 13.*"
                                              r"pass num_classes=13"):
        mtv.from_scenic(config, FIXTURE / "params.npz")
    assert mtv.from_scenic(config, FIXTURE / "params.npz", num_classes=13).spec["num_classes"] == 13


def test_init_from_a_checkpoint_with_another_head_size_says_to_drop_the_head():
    import numpy as np

    from mtv.errors import CheckpointError
    from mtv.training.init_from import init_from_mtv
    from tests.helpers import fixture_model

    model = fixture_model()
    restored = {k: np.asarray(v.numpy()) for k, v in model.flax_params().items()}
    restored["output_projection/kernel"] = restored["output_projection/kernel"][:, :3]
    restored["output_projection/bias"] = restored["output_projection/bias"][:3]
    with pytest.raises(CheckpointError, match="restore_output_projection=False"):
        init_from_mtv(model, restored, restore_output_projection=True)


@pytest.mark.parametrize("dtype", ["str", "object", "bool"])
def test_a_param_of_a_non_numeric_dtype_is_a_checkpoint_error_naming_it(dtype):
    import numpy as np

    import mtv
    from mtv.errors import CheckpointError
    from tests.helpers import FIXTURE, fixture_model

    fixture_model()  # skips without ../shared
    params = dict(np.load(FIXTURE / "params.npz"))
    params["cls_global"] = np.zeros(params["cls_global"].shape, dtype=dtype)
    with pytest.raises(CheckpointError, match=r"param 'cls_global' has dtype \S+, not a number"):
        mtv.from_scenic(FIXTURE / "config.json", params)


def test_num_classes_zero_is_a_config_error_everywhere(tmp_path):
    import mtv
    from tests.helpers import FIXTURE, fixture_model

    model = fixture_model()
    model.save(tmp_path / "m.keras")
    mtv.save_preset(model, tmp_path / "preset")
    for load in (lambda: mtv.from_scenic(FIXTURE / "config.json", FIXTURE / "params.npz", num_classes=0),
                 lambda: mtv.build_model(FIXTURE / "config.json", num_classes=0),
                 lambda: mtv.load(tmp_path / "m.keras", num_classes=0),
                 lambda: mtv.load(tmp_path / "preset", num_classes=-3)):
        with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
            load()


@pytest.mark.parametrize("damage, expected", [
    ("missing_key", "the field 'num_frames' is missing"),
    ("bad_json", "is not a readable mtv preset"),
])
def test_a_preset_with_a_damaged_config_json_is_a_zoo_error_naming_it(tmp_path, damage, expected):
    import mtv
    from mtv.errors import ZooError
    from tests.helpers import fixture_model

    preset = mtv.save_preset(fixture_model(), tmp_path / "preset")
    config = json.loads((preset / "config.json").read_text())
    if damage == "missing_key":
        del config["spec"]["modalities"]["rgb"]["num_frames"]
        (preset / "config.json").write_text(json.dumps(config))
    else:
        (preset / "config.json").write_text(json.dumps(config)[:-20])
    with pytest.raises(ZooError, match=expected) as info:
        mtv.load(preset)
    assert str(preset) in str(info.value) and "save the preset again" in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign_zip"])
def test_a_corrupt_keras_file_is_a_checkpoint_error_naming_it(tmp_path, damage):
    import zipfile

    import mtv
    from mtv.errors import CheckpointError
    from tests.helpers import fixture_model

    good, bad = tmp_path / "good.keras", tmp_path / "bad.keras"
    fixture_model().save(good)
    if damage == "garbage":
        bad.write_bytes(b"not a zip archive")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="keras file") as info:
        mtv.load(bad)
    assert str(bad) in str(info.value) and "File not found" not in str(info.value)


@pytest.mark.parametrize("handle", ["", "   "])
def test_loading_an_empty_handle_is_a_zoo_error(handle):
    import mtv
    from mtv.errors import ZooError

    with pytest.raises(ZooError, match="empty handle"):
        mtv.load(handle)


# ------------------------------------------------------------------ item 10: Scenic configs without an input size
def test_a_scenic_config_without_a_crop_size_gets_its_input_size_from_the_checkpoint(tmp_path, caplog):
    import logging

    import numpy as np

    import mtv
    from tests.helpers import FIXTURE, fixture_input, fixture_logits

    config = _fixture_config(tmp_path, input_shape=None)  # the fixture states its size only in input_shape
    assert "crop_size" not in json.loads(config.read_text())["config"]["dataset_configs"]
    with caplog.at_level(logging.INFO):
        model = mtv.from_scenic(config, FIXTURE / "params.npz")
    assert "inferred 8 frames of 32x32" in caplog.text
    assert model.spec["modalities"]["rgb"]["image_size"] == [32, 32]
    given = mtv.from_scenic(FIXTURE / "config.json", FIXTURE / "params.npz")
    logits = np.asarray(model(fixture_input(), training=False))
    np.testing.assert_allclose(logits, np.asarray(given(fixture_input(), training=False)), rtol=0, atol=0)
    np.testing.assert_allclose(logits, fixture_logits(), atol=1e-4)


def test_the_frames_come_from_the_cls_tokens_when_the_config_states_none(tmp_path):
    import mtv
    from tests.helpers import FIXTURE

    data = json.loads(_fixture_config(tmp_path, input_shape=None).read_text())
    del data["config"]["dataset_configs"]["num_frames"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    model = mtv.from_scenic(tmp_path / "config.json", FIXTURE / "params.npz")
    assert model.spec["modalities"]["rgb"]["num_frames"] == 8


def test_an_input_size_that_cannot_be_inferred_says_to_pass_input_shape(tmp_path):
    import numpy as np

    import mtv
    from mtv.errors import CheckpointError
    from tests.helpers import FIXTURE

    config = _fixture_config(tmp_path, input_shape=None)
    params = dict(np.load(FIXTURE / "params.npz"))
    key = "MultiviewEncoder/posembed_input_view0/pos_embedding"
    params[key] = params[key][:, :13]  # 12 spatial tokens: no square grid
    with pytest.raises(CheckpointError, match=r"not a square grid.*pass input_shape=\(T, H, W\)"):
        mtv.from_scenic(config, params)


# ------------------------------------------------------------------ item 5: file-system failures while writing
def _one_video_csv(tmp_path: Path) -> Path:
    from tests.data.synthetic import level_frames, write_video

    write_video(tmp_path / "clip.mp4", level_frames([0, 80, 160, 240]))
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\nclip.mp4,0\n")
    return csv_path


def test_data_prepare_into_a_path_below_a_file_is_a_clean_error_naming_it(tmp_path, capsys):
    csv_path = _one_video_csv(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "records"
    assert run(["data", "prepare", str(csv_path), "--out", str(out), "--num_classes", "2"]) == 1
    err = capsys.readouterr().err
    assert "mtv data: error: " in err and str(out) in err and "not a directory" in err
    assert "Traceback" not in err


def test_data_prepare_on_a_full_disk_leaves_no_shard_that_looks_complete(tmp_path, capsys, monkeypatch):
    import errno

    import tensorflow as tf

    class FullDisk:
        def __init__(self, path):
            Path(path).write_bytes(b"")  # the 0-byte file a real full disk leaves

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    csv_path = _one_video_csv(tmp_path)
    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    out = tmp_path / "records"
    assert run(["data", "prepare", str(csv_path), "--out", str(out), "--num_classes", "2"]) == 1
    err = capsys.readouterr().err
    assert "mtv data: error: no space left on device while writing " in err
    assert str(out / "train-00000-of-00001.tfrecord") in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def _two_results(tmp_path: Path) -> list[str]:
    import numpy as np

    from mtv.epic.results import write_results

    ids = [f"clip{i}" for i in range(4)]
    rng = np.random.default_rng(0)
    return [str(write_results(tmp_path / f"{name}.npz", ids, {"label": rng.normal(size=(4, 3)).astype("float32")}))
            for name in ("a", "b")]


def test_ensemble_into_a_path_below_a_file_is_a_clean_error_naming_it(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "fused.npz"
    assert run(["ensemble", *_two_results(tmp_path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mtv ensemble: error: " in err and str(out) in err and "not a directory" in err
    assert "Traceback" not in err


def test_ensemble_on_a_full_disk_says_so_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    import errno

    import numpy as np

    inputs = _two_results(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "out" / "fused.npz"
    assert run(["ensemble", *inputs, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"no space left on device while writing {out}" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []  # no partial file, no temporary left behind


def test_export_into_a_path_below_a_file_is_a_clean_error_naming_it(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "saved"
    assert run(["export", "camera-motion", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mtv export: error: " in err and str(out) in err and "not a directory" in err
    assert "Traceback" not in err


def test_train_into_a_workdir_below_a_file_is_a_clean_error_naming_it(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    workdir = tmp_path / "afile" / "run"
    assert run(["train", f"--config={TINY}", f"--workdir={workdir}", "--config.num_training_steps=2"]) == 1
    err = capsys.readouterr().err
    assert "mtv train: error: " in err and str(workdir) in err and "not a directory" in err
    assert "Traceback" not in err
