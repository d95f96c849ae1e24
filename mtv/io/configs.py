"""Load experiment configs: a config file (with config_flags' ':arg'), an experiment name, or JSON."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from mtv.errors import ConfigError, MTVError
from mtv.io.resources import resource_path

# JSON has no tuples; these fields are tuples in the Python configs, so a JSON copy compares equal.
_TUPLE_FIELDS = {("patches", "size"), ("cross_view_fusion", "fusion_layers")}


def config_root() -> Path:
    """Where the shipped experiment configs are: the package mtv.configs (the repo's configs/)."""
    return resource_path("mtv.configs")


def list_configs(configs_dir: Path | None = None) -> dict[str, Path]:
    """Experiment name -> config file, for every shipped config (or every config under `configs_dir`)."""
    root = Path(configs_dir) if configs_dir is not None else config_root()
    if not root.is_dir():
        return {}
    return {p.stem: p for p in sorted(root.rglob("*.py")) if not p.name.startswith("_")}


def _from_python(path: Path, arg: str | None) -> ml_collections.ConfigDict:
    """Imports a config file by path and calls get_config(), as ml_collections.config_flags does."""
    spec = importlib.util.spec_from_file_location(f"mtv_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python config file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except MTVError:
        raise
    except Exception as err:
        raise ConfigError(f"{path}: importing the config file failed: {type(err).__name__}: {err}") from err
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{path}: a config file must define get_config(); this one does not")
    try:
        config = get_config(arg) if arg is not None else get_config()
    except MTVError:
        raise
    except Exception as err:
        call = f"get_config({arg!r})" if arg is not None else "get_config()"
        raise ConfigError(f"{path}: {call} failed: {type(err).__name__}: {err}") from err
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    return config


def _to_config(value: Any, parent: str | None = None, key: str | None = None) -> Any:
    """JSON value -> ConfigDict tree; dicts inside lists become ConfigDicts too (as in view_configs)."""
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _to_config(v, key, k) for k, v in value.items()})
    if isinstance(value, list):
        items = [_to_config(v, parent, None) for v in value]
        return tuple(items) if (parent, key) in _TUPLE_FIELDS else items
    return value


def _from_json(path: Path) -> ml_collections.ConfigDict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON config: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a record that wraps the config, like the parity fixtures' config.json
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a JSON config must hold an object (or one with a 'config' object), "
                          f"got {type(data).__name__}")
    return _to_config(data)


def load_config(path_or_name: str) -> ml_collections.ConfigDict:
    """A config from `file.py[:arg]`, a bare experiment name (e.g. 'k400_mtv_b2_cva'), or `file.json`."""
    text = str(path_or_name)
    base, sep, arg = text.partition(":")
    arg_or_none = arg if sep else None
    path = Path(base)
    if path.suffix == ".json":
        if sep:
            raise ConfigError(f"{text}: a ':arg' suffix only applies to Python config files")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return _from_json(path)
    if path.suffix == ".py" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return _from_python(path, arg_or_none)
    known = list_configs()
    if base in known:
        return _from_python(known[base], arg_or_none)
    close = difflib.get_close_matches(base, list(known), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown config '{base}': not a file and not an experiment under {config_root()}.{hint} "
        f"Known experiments: {', '.join(known) or 'none'}."
    )


# ------------------------------------------------------------------------------ unknown fields
# Fields mtv reads (the model section has its own schema in mtv.models.spec).
TOP_LEVEL_FIELDS = frozenset({
    "experiment_name", "dataset_name", "dataset_configs", "model_name", "model", "batch_size", "eval_batch_size",
    "num_training_steps", "num_training_epochs", "checkpoint_steps", "log_eval_steps", "max_checkpoint_keep",
    "optimizer", "optimizer_configs", "lr_configs", "l2_decay_factor", "max_grad_norm", "label_smoothing", "mixup",
    "rng_seed", "mixed_precision", "jit_compile", "strategy", "init_from", "class_names", "cofinetune", "datasets",
    "modality_dropout",
})
# Fields of Scenic's trainers and input pipelines that mtv carries without using (copying a Scenic config
# over must work): accepted silently.
SCENIC_TOP_LEVEL_FIELDS = frozenset({
    "trainer_name", "checkpoint", "data_dtype_str", "debug_train", "debug_eval", "write_summary",
    "write_xm_measurements", "multicrop_clips_per_device", "xprof", "log_summary_steps", "count_flops",
    "num_training_hours", "eval_only", "init_head_bias", "lazy_init", "batch_size_per_device",
})
DATASET_FIELDS = frozenset({
    "num_frames", "stride", "min_resize", "crop_size", "zero_centering", "num_test_clips", "do_three_spatial_crops",
    "random_flip", "label_offset", "augmentation_params", "num_classes", "class_splits", "split_names", "base_dir",
    "tables", "examples_per_subset", "train_csv", "eval_csv", "video_root", "synthetic", "audio", "flow",
})
SCENIC_DATASET_FIELDS = frozenset({
    "one_hot_labels", "prefetch_to_device", "test_batch_size", "test_on_val", "do_multicrop_test", "log_test_epochs",
    "keep_test_key", "modalities", "return_as_dict", "include_video_id", "num_eval_clips", "train_split",
    "test_split", "val_split", "shuffle_buffer_size", "num_test_crops",
})
AUGMENTATION_FIELDS = frozenset({
    "do_jitter_scale", "scale_min_factor", "scale_max_factor", "prob_scale_jitter", "do_color_augment",
    "prob_color_augment", "prob_color_drop", "do_rand_augment", "rand_augment_num_layers", "rand_augment_magnitude",
})
SCENIC_AUGMENTATION_FIELDS = frozenset({"do_mixup", "mixup_alpha", "do_mixup_pred", "do_cutmix"})
COFINETUNE_ENTRY_FIELDS = frozenset({"name", "dataset_name", "dataset_configs", "num_classes", "sampling_weight"})


def _section_problems(section: Any, where: str, known: frozenset, carried: frozenset = frozenset()):
    """(errors, warnings) for the unknown keys of one config section."""
    errors, warnings = [], []
    if not hasattr(section, "keys"):
        return errors, warnings
    for key in section.keys():
        if key in known or key in carried:
            continue
        close = difflib.get_close_matches(str(key), sorted(known | carried), n=1, cutoff=0.8)
        if close:
            errors.append(f"{where}{key} is not a config field (did you mean '{where}{close[0]}'?)")
        else:
            warnings.append(f"{where}{key}")
    return errors, warnings


def check_config_fields(config: Any) -> list[str]:
    """Refuses misspelt experiment-config fields outside `model`; returns (and logs) the other unknown ones.

    Checked: the top level, `dataset_configs`, `dataset_configs.augmentation_params` and each entry of
    `datasets` (co-finetuning); `model` is checked by `mtv.models.spec`. An unknown field that is a near
    miss of a known one (`batch_szie`, `dataset_configs.num_frame`) is a ConfigError with did-you-mean: it
    is almost surely a typo that would otherwise silently keep the default. Any other unknown field is a
    warning, not an error, because Scenic-style configs legitimately carry fields for Scenic's own
    trainers, input pipelines and tooling (e.g. `xprof`, `trainer_name`, `dataset_configs.prefetch_to_device`)
    that mtv does not use, and a copied Scenic config must still load.
    """
    from absl import logging

    errors, warnings = _section_problems(config, "", TOP_LEVEL_FIELDS, SCENIC_TOP_LEVEL_FIELDS)
    sections = [(config.get("dataset_configs"), "dataset_configs.")]
    for i, entry in enumerate(config.get("datasets") or [] if config.get("cofinetune") else []):
        e, w = _section_problems(entry, f"datasets[{i}].", COFINETUNE_ENTRY_FIELDS)
        errors, warnings = errors + e, warnings + w
        if hasattr(entry, "get"):
            sections.append((entry.get("dataset_configs"), f"datasets[{i}].dataset_configs."))
    for section, where in sections:
        if not hasattr(section, "get"):
            continue
        e, w = _section_problems(section, where, DATASET_FIELDS, SCENIC_DATASET_FIELDS)
        errors, warnings = errors + e, warnings + w
        e, w = _section_problems(section.get("augmentation_params"), f"{where}augmentation_params.",
                                 AUGMENTATION_FIELDS, SCENIC_AUGMENTATION_FIELDS)
        errors, warnings = errors + e, warnings + w
    if errors:
        raise ConfigError("; ".join(errors) + ". Fix the spelling in the config file or the --config.FIELD override.")
    if warnings:
        logging.warning("config fields mtv does not use (ignored): %s", ", ".join(warnings))
    return warnings
