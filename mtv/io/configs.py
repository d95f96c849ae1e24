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
