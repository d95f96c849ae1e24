"""The dataset registry: what it lists, a dataset registered from outside, unknown names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtv.data import datasets
from mtv.data.sources import array_source
from mtv.errors import ConfigError
from mtv.io.configs import load_config
from mtv.training.trainer import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "camera_motion" / "camera_motion_tiny.py"


def _tiny(dataset_name: str):
    config = load_config(str(TINY))
    config.dataset_name = dataset_name
    config.num_training_steps, config.checkpoint_steps, config.batch_size = 2, 2, 2
    config.lr_configs.steps_per_cycle, config.lr_configs.warmup_steps = 2, 1
    return config


def test_the_registry_lists_its_datasets():
    assert {"camera_motion", "video_tfrecord_dataset", "video_csv", "arrays"} <= set(datasets.list_datasets())
    assert datasets.get_dataset("camera_motion").num_classes == 13


def test_a_dataset_registered_outside_mtv_trains_without_any_trainer_change(tmp_path):
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (6, 8, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 0])
    calls = []

    @datasets.register_dataset("five_colours")
    def build(request: datasets.DatasetRequest) -> datasets.DataSpec:
        calls.append(request)
        source = array_source(clips, {"label": labels}, request.classes, name=request.name)
        return datasets.DataSpec(request.name, source, eval_arrays=(clips[:4], {"label": labels[:4]}),
                                 class_names=["a", "b", "c", "d", "e"], held_out="four of the training clips")

    try:
        assert "five_colours" in datasets.list_datasets()
        config = _tiny("five_colours")
        config.dataset_configs.num_classes = 5
        result = train(config, tmp_path / "run", export_preset=tmp_path / "preset")
    finally:
        datasets.unregister_dataset("five_colours")
    assert [r.classes for r in calls] == [{"label": 5}]
    assert calls[0].dataset_configs["num_frames"] == 8 and calls[0].workdir == tmp_path / "run"
    assert result.step == 2 and set(result.eval) == {"accuracy"}
    assert result.model.spec["num_classes"] == 5
    meta = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert meta["class_names"] == ["a", "b", "c", "d", "e"]
    assert "four of the training clips" in meta["accuracy"]["source"]
    assert "five_colours" not in datasets.list_datasets()


@pytest.mark.parametrize(("name", "hint"), [("camera_motoin", "did you mean 'camera_motion'"),
                                            ("video_tfrecords", "did you mean 'video_tfrecord_dataset'"),
                                            ("imagenet", "Known datasets: arrays, camera_motion")])
def test_an_unknown_dataset_name_is_a_config_error_with_a_suggestion(tmp_path, name, hint):
    with pytest.raises(ConfigError, match="config.dataset_name is '" + name) as info:
        train(_tiny(name), tmp_path / "run")
    assert hint in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_an_unknown_cofinetuning_dataset_names_its_entry(tmp_path):
    import ml_collections

    config = _tiny("camera_motion")
    config.cofinetune = True
    config.datasets = [ml_collections.ConfigDict({"name": "a", "dataset_name": "camera_motion"}),
                       ml_collections.ConfigDict({"name": "b", "dataset_name": "camera-motion"})]
    with pytest.raises(ConfigError, match=r"config.datasets\[1\].dataset_name .*did you mean 'camera_motion'"):
        train(config, tmp_path / "run")


def test_a_fixed_class_count_disagreeing_with_the_config_is_refused(tmp_path):
    config = _tiny("camera_motion")
    config.cofinetune = True
    config.datasets = [{"name": "motion", "dataset_name": "camera_motion", "num_classes": 12}]
    with pytest.raises(ConfigError, match="has 13 classes, the config says 12"):
        train(config, tmp_path / "run")


def test_registering_a_second_builder_under_a_taken_name_is_refused():
    with pytest.raises(ConfigError, match="registered twice"):
        datasets.register_dataset("camera_motion")(lambda request: None)
