"""The experiment configs carry Scenic's fields and values; load_config finds and loads them."""

import ast
import importlib.util
import json
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from mtv.errors import ConfigError
from mtv.io import configs as configs_io

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

FILES = {
    "k400_mtv_b2_cva": "kinetics/k400_mtv_b2_cva.py",
    "k600_mtv_b2_cva": "kinetics/k600_mtv_b2_cva.py",
    "k700_mtv_b2_cva": "kinetics/k700_mtv_b2_cva.py",
    "k600_mtv_l2_cva": "kinetics/k600_mtv_l2_cva.py",
    "k700_mtv_l2_cva": "kinetics/k700_mtv_l2_cva.py",
    "mit_mtv_l2_cva": "mit/mit_mtv_l2_cva.py",
    "epic_mtv_b2_cva": "epic_kitchens/epic_mtv_b2_cva.py",
    "ssv2_mtv_b2_cva": "ssv2/ssv2_mtv_b2_cva.py",
}

B2 = "Ti/8+S/4+B/2"
L2 = "Ti/16+S/8+B/4+L/2"
# Read off Scenic's files (scenic/projects/mtv/configs/..., commit a6c44383):
# variant, frames, stride, classes, fusion layers, base lr, epochs, batch, stochastic depth,
# label smoothing, test clips, three crops, test batch, model_name suffix, init type, mixup alpha,
# positional_embed_size_change. Classes for MiT (339) and SSv2 (174) are our documented additions.
EXPECTED = {
    "k400_mtv_b2_cva": (B2, 32, 2, 400, (5, 11), 0.1, 30, 64, 0.1, None, 4, True, 4, "multiclass", "vit",
                        None, "tile"),
    "k600_mtv_b2_cva": (B2, 32, 2, 600, (5, 11), 0.2, 30, 64, 0.1, None, 4, True, 4, "multiclass", "vit",
                        None, "tile"),
    "k700_mtv_b2_cva": (B2, 32, 2, 700, (5, 11), 0.1, 30, 64, 0.0, None, 4, True, 4, "multiclass", "vit",
                        None, "tile"),
    "k600_mtv_l2_cva": (L2, 32, 2, 600, (11, 23), 0.1, 30, 64, 0.1, None, 4, True, 4, "multiclass", "vit",
                        None, "tile"),
    "k700_mtv_l2_cva": (L2, 32, 2, 700, (11, 23), 0.1, 30, 64, 0.1, None, 4, True, 4, "multiclass", "vit",
                        None, "tile"),
    "mit_mtv_l2_cva": (L2, 32, 3, 339, (11, 23), 0.2, 20, 256, 0.1, None, 1, True, 4, "multiclass", "mtv",
                       0.2, "resize"),
    "epic_mtv_b2_cva": (B2, 64, 1, None, (5, 11), 0.2, 80, 128, 0.1, 0.2, 4, False, 8, "multihead", "mtv",
                        None, "resize"),
    "ssv2_mtv_b2_cva": (B2, 48, 1, 174, (5, 11), 0.2, 60, 256, 0.1, 0.2, 4, True, 8, "multiclass", "mtv",
                        0.3, "resize"),
}

# Dotted field names of Scenic's k400 config, written out by hand from its file.
K400_FIELDS = {
    "experiment_name", "dataset_name", "data_dtype_str", "multicrop_clips_per_device", "model_name",
    "trainer_name", "optimizer", "optimizer_configs", "l2_decay_factor", "max_grad_norm",
    "label_smoothing", "num_training_epochs", "batch_size", "rng_seed",
    "write_summary", "checkpoint", "debug_train", "debug_eval",
    "dataset_configs.base_dir", "dataset_configs.tables.train", "dataset_configs.tables.validation",
    "dataset_configs.tables.test", "dataset_configs.examples_per_subset.train",
    "dataset_configs.examples_per_subset.validation", "dataset_configs.examples_per_subset.test",
    "dataset_configs.num_classes", "dataset_configs.num_frames", "dataset_configs.stride",
    "dataset_configs.min_resize", "dataset_configs.crop_size", "dataset_configs.one_hot_labels",
    "dataset_configs.zero_centering", "dataset_configs.do_multicrop_test",
    "dataset_configs.do_three_spatial_crops", "dataset_configs.log_test_epochs",
    "dataset_configs.num_test_clips", "dataset_configs.test_batch_size", "dataset_configs.prefetch_to_device",
    "dataset_configs.augmentation_params.do_jitter_scale",
    "dataset_configs.augmentation_params.scale_min_factor",
    "dataset_configs.augmentation_params.scale_max_factor",
    "dataset_configs.augmentation_params.prob_scale_jitter",
    "dataset_configs.augmentation_params.do_color_augment",
    "dataset_configs.augmentation_params.prob_color_augment",
    "dataset_configs.augmentation_params.prob_color_drop",
    "model.classifier", "model.dropout_rate", "model.attention_dropout_rate", "model.stochastic_depth",
    "model.view_configs", "model.cross_view_fusion.type", "model.cross_view_fusion.fuse_in_descending_order",
    "model.cross_view_fusion.use_query_config", "model.cross_view_fusion.fusion_layers",
    "model.global_encoder_config.num_heads", "model.global_encoder_config.mlp_dim",
    "model.global_encoder_config.num_layers", "model.global_encoder_config.hidden_size",
    "model.global_encoder_config.merge_axis", "model.temporal_encoding_config.kernel_init_method",
    "model.temporal_encoding_config.method",
    "init_from.model_cfg", "init_from.model_type", "init_from.checkpoint_path",
    "init_from.checkpoint_formats", "init_from.restore_positional_embedding",
    "init_from.restore_input_embedding", "init_from.positional_embed_size_change",
    "lr_configs.learning_rate_schedule", "lr_configs.factors", "lr_configs.warmup_steps",
    "lr_configs.steps_per_cycle", "lr_configs.base_learning_rate",
}
_FINETUNE_DIFF = (
    {"dataset_configs.num_classes", "init_from.model_cfg", "init_from.checkpoint_formats",
     "init_from.restore_input_embedding"},
    {"dataset_configs.augmentation_params.do_rand_augment", "log_eval_steps", "write_xm_measurements"},
)
EPIC_FIELDS = (K400_FIELDS - _FINETUNE_DIFF[0]) | _FINETUNE_DIFF[1] | {
    "dataset_configs.class_splits", "dataset_configs.split_names", "dataset_configs.test_on_val",
    "dataset_configs.augmentation_params.rand_augment_num_layers",
    "dataset_configs.augmentation_params.rand_augment_magnitude",
}
SSV2_FIELDS = (EPIC_FIELDS - {"dataset_configs.class_splits", "dataset_configs.split_names",
                              "dataset_configs.test_on_val"}) | {"mixup.alpha", "dataset_configs.num_classes"}
MIT_FIELDS = SSV2_FIELDS - {"dataset_configs.augmentation_params.rand_augment_num_layers",
                            "dataset_configs.augmentation_params.rand_augment_magnitude"}
FIELDS = {name: K400_FIELDS for name in FILES if name.startswith("k")}
FIELDS.update(epic_mtv_b2_cva=EPIC_FIELDS, ssv2_mtv_b2_cva=SSV2_FIELDS, mit_mtv_l2_cva=MIT_FIELDS)

VIEW = {  # size -> (hidden, heads, mlp, layers), Scenic's table
    "Ti": (192, 3, 768, 12), "S": (384, 6, 1536, 12), "B": (768, 12, 3072, 12), "L": (1024, 16, 4096, 24),
}


def dotted(tree, prefix=""):
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= dotted(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def load_by_spec(path: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module", params=sorted(FILES))
def named_config(request):
    return request.param, load_by_spec(CONFIGS / FILES[request.param])


def test_config_files_are_exactly_the_released_experiments():
    # Our own experiments (not Scenic's) are checked by their own tests.
    ours = ("epic_mm_", "camera_motion")
    found = {k: v for k, v in configs_io.list_configs().items() if not k.startswith(ours)}
    assert set(found) == set(FILES)
    assert {p.relative_to(CONFIGS).as_posix() for p in found.values()} == set(FILES.values())


@pytest.mark.parametrize("rel", sorted(FILES.values()))
def test_configs_import_only_ml_collections_and_variants(rel):
    tree = ast.parse((CONFIGS / rel).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    assert imported == {"ml_collections", "mtv.variants"}
    assert "a6c4438309527730cde7c9c59d15c74e6113ea0a" in (CONFIGS / rel).read_text()


def test_field_names_match_scenic(named_config):
    name, config = named_config
    assert dotted(config.to_dict()) == FIELDS[name]


def test_values_match_scenic(named_config):
    name, config = named_config
    (variant, frames, stride, classes, fusion, lr, epochs, batch, depth, smoothing, clips, three_crops,
     test_batch, head, init_type, mixup, pos_change) = EXPECTED[name]
    data = config.dataset_configs
    assert config.experiment_name == f"{name.split('_')[0]}_mtv_{variant}"
    assert (data.num_frames, data.stride, data.min_resize, data.crop_size) == (frames, stride, 256, 224)
    assert data.get("num_classes") == classes
    assert tuple(config.model.cross_view_fusion.fusion_layers) == fusion
    assert config.lr_configs.base_learning_rate == pytest.approx(lr)
    assert (config.num_training_epochs, config.batch_size) == (epochs, batch)
    assert config.model.stochastic_depth == depth
    assert config.label_smoothing == smoothing
    assert (data.num_test_clips, data.do_three_spatial_crops, data.test_batch_size) == (clips, three_crops,
                                                                                         test_batch)
    assert config.model_name == f"mtv_{head}_classification"
    assert config.init_from.model_type == init_type
    assert config.init_from.positional_embed_size_change == pos_change
    assert (config.mixup.alpha if "mixup" in config else None) == mixup
    # Shared by every released config.
    assert config.model.cross_view_fusion.type == "cross_view_attention"
    assert config.model.cross_view_fusion.fuse_in_descending_order is True
    assert config.model.cross_view_fusion.use_query_config is True
    assert config.model.global_encoder_config.to_dict() == {
        "num_heads": 8, "mlp_dim": 3072, "num_layers": 12, "hidden_size": 768, "merge_axis": "channel"}
    assert config.model.temporal_encoding_config.to_dict() == {
        "kernel_init_method": "central_frame_initializer", "method": "3d_conv"}
    assert (config.model.classifier, config.model.dropout_rate, config.model.attention_dropout_rate) == (
        "token", 0.0, 0.0)
    assert (config.optimizer, config.max_grad_norm, config.l2_decay_factor) == ("momentum", 1, 0)
    assert config.lr_configs.factors == "constant * cosine_decay * linear_warmup"
    assert data.augmentation_params.scale_max_factor == 1.33
    assert data.augmentation_params.prob_color_augment == 0.8
    assert data.zero_centering is True


def test_view_configs_follow_the_variant(named_config):
    name, config = named_config
    variant = EXPECTED[name][0]
    views = config.model.view_configs
    sizes = [part.split("/")[0] for part in variant.split("+")]
    temporal = [int(part.split("/")[1]) for part in variant.split("+")]
    assert [tuple(v.patches.size) for v in views] == [(16, 16, t) for t in temporal]
    assert [(v.hidden_size, v.num_heads, v.mlp_dim, v.num_layers) for v in views] == [VIEW[s] for s in sizes]
    assert max(config.model.cross_view_fusion.fusion_layers) == max(v.num_layers for v in views) - 1
    assert config.dataset_configs.num_frames % max(temporal) == 0


def test_k400_view_configs_exactly():
    config = load_by_spec(CONFIGS / FILES["k400_mtv_b2_cva"])
    assert [tuple(v.patches.size) for v in config.model.view_configs] == [(16, 16, 8), (16, 16, 4),
                                                                            (16, 16, 2)]
    assert config.init_from.checkpoint_formats == ["big_vision"] * 3
    assert len(config.init_from.model_cfg) == 3
    assert config.init_from.model_cfg[0].model.classifier == "token"
    assert config.lr_configs.warmup_steps == 0.0  # Scenic ships a train size of 0


def test_epic_heads():
    config = load_by_spec(CONFIGS / FILES["epic_mtv_b2_cva"])
    assert list(config.dataset_configs.class_splits) == [300, 97]
    assert list(config.dataset_configs.split_names) == ["noun", "verb"]
    assert config.dataset_configs.num_frames == 64
    assert config.dataset_configs.test_on_val is True
    assert config.dataset_configs.augmentation_params.rand_augment_num_layers == 3
    assert config.dataset_configs.augmentation_params.rand_augment_magnitude == 10
    # 67217 // 128 = 525 steps per epoch in Scenic's schedule.
    assert config.lr_configs.warmup_steps == pytest.approx(2.5 * 525)
    assert config.lr_configs.steps_per_cycle == 80 * 525


def test_no_google_internal_paths(named_config):
    _, config = named_config

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from strings(v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
        elif isinstance(value, str):
            yield value

    for text in strings(config.to_dict()):
        assert not text.startswith(("/cns/", "gs://", "/bigstore/", "/placer/")), text


# ---------------------------------------------------------------------------------------------- load_config


def test_load_by_name_equals_load_by_file():
    by_name = configs_io.load_config("k400_mtv_b2_cva")
    by_path = configs_io.load_config(str(CONFIGS / FILES["k400_mtv_b2_cva"]))
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.dataset_configs.num_classes == 400


def test_load_relative_path_with_arg(monkeypatch):
    monkeypatch.chdir(REPO)
    config = configs_io.load_config("configs/kinetics/k400_mtv_b2_cva.py:local")
    assert config.dataset_configs.num_frames == 32


def test_arg_is_passed_to_get_config(tmp_path):
    path = tmp_path / "echo_cfg.py"
    path.write_text("import ml_collections\n\ndef get_config(arg='none'):\n"
                    "    return ml_collections.ConfigDict({'arg': arg})\n")
    assert configs_io.load_config(f"{path}:abc").arg == "abc"
    assert configs_io.load_config(str(path)).arg == "none"


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # inside ml_collections
def test_config_flags_can_load_our_files():
    flag_values = flags.FlagValues()
    path = CONFIGS / FILES["epic_mtv_b2_cva"]
    config_flags.DEFINE_config_file("config", flag_values=flag_values)
    flag_values(["prog", f"--config={path}:unused"])
    assert flag_values.config.batch_size == 128
    assert list(flag_values.config.dataset_configs.class_splits) == [300, 97]


def test_unknown_name_suggests_close_match():
    with pytest.raises(ConfigError) as err:
        configs_io.load_config("k400_mtv_b2_cav")
    assert "Did you mean 'k400_mtv_b2_cva'" in str(err.value)


def test_missing_file_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        configs_io.load_config(str(tmp_path / "nope.py"))
    no_fn = tmp_path / "no_fn.py"
    no_fn.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        configs_io.load_config(str(no_fn))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="broken.py"):
        configs_io.load_config(str(broken))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        configs_io.load_config(str(bad_json))
    with pytest.raises(ConfigError, match="arg"):
        configs_io.load_config(f"{bad_json}:x")


def test_variant_error_surfaces_as_config_error(tmp_path):
    path = tmp_path / "bad_variant.py"
    path.write_text("from mtv import variants\n\ndef get_config():\n"
                    "    return {'views': variants.parse_view_configs('Q/2')}\n")
    with pytest.raises(ConfigError, match="Unknown ViT size 'Q'"):
        configs_io.load_config(str(path))


def test_load_fixture_json(shared_dir):
    path = shared_dir / "fixtures" / "scenic_mtv" / "cva_2view" / "config.json"
    config = configs_io.load_config(str(path))
    views = config.model.view_configs
    assert isinstance(views[0], ml_collections.ConfigDict)
    assert [tuple(v.patches.size) for v in views] == [(8, 8, 4), (8, 8, 2)]
    assert tuple(config.model.cross_view_fusion.fusion_layers) == (1,)
    assert config.dataset_configs.num_frames == 8


@pytest.mark.parametrize("name", sorted(FILES))
def test_json_round_trip_of_every_config(tmp_path, name):
    config = configs_io.load_config(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"config": json.loads(config.to_json())}))
    assert configs_io.load_config(str(path)).to_dict() == config.to_dict()
