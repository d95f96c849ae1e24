"""absl FlagValues that lets ml_collections' `--config.FIELD=VALUE` overrides work in-process.

config_flags finds override flags by reading `sys.argv`, which is not what `mtv.cli.run([...])` parses.
This FlagValues hands config_flags the arguments it is actually parsing, and forgets the override flags
of an earlier parse so the same process can parse again with another config. It knows which flags are
config files because it defined them (`define_config_file`), not by inspecting absl's flag classes.
"""

from __future__ import annotations

import difflib
from typing import Any

from absl import flags
from ml_collections import config_flags

from mtv.errors import ConfigError, MTVError


class _ConfigFileParser(flags.ArgumentParser):
    """Reads `--config=FILE[:arg]` with `mtv.io.configs.load_config`: clean ConfigErrors, JSON and experiment names."""

    def __init__(self, name: str, lock_config: bool = True):
        self.name = name
        self._lock_config = lock_config

    def flag_type(self) -> str:
        """What absl's help calls this flag's type."""
        return "config object"

    def parse(self, path):
        from mtv.io.configs import load_config

        config = load_config(path)
        if self._lock_config:
            config.lock()
        return config


def _unknown_override(config: Any, field_path: str) -> str | None:
    """Why `field_path` is not a field of `config` (with did-you-mean), or None if it is one."""
    node, done = config, []
    for key in field_path.split("."):
        if isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
            node, done = node[int(key)], [*done, key]
            continue
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if key not in keys:
            where = "the config" if not done else "config." + ".".join(done)
            close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
            hint = f" (did you mean '{'.'.join([*done, close[0]])}'?)" if close else ""
            return f"{where} has no field '{key}'{hint}"
        node, done = node[key], [*done, key]
    return None


class ConfigFlagValues(flags.FlagValues):
    """FlagValues whose config file flags see the argv given to `__call__`."""

    def __init__(self):
        super().__init__()
        # FlagValues turns attribute assignment into flag lookups; plain attributes go in __dict__.
        self.__dict__["_mtv_argv"] = []
        self.__dict__["_mtv_config_flags"] = []

    @property
    def argv(self) -> list:
        """The live list config_flags reads (passed as `sys_argv=` to DEFINE_config_file)."""
        return self.__dict__["_mtv_argv"]

    def define_config_file(self, name: str, default: str | None, help_string: str, **kwargs: Any) -> flags.FlagHolder:
        """`config_flags.DEFINE_config_file` on these flags, reading the argv this object is called with."""
        holder = config_flags.DEFINE_config_file(name, default, help_string, flag_values=self, sys_argv=self.argv,
                                                 **kwargs)
        flag = self[holder.name]
        flag.parser = _ConfigFileParser(name=holder.name, lock_config=kwargs.get("lock_config", True))
        parse_with_overrides = flag._parse

        def parse(argument):
            try:
                return parse_with_overrides(argument)
            except MTVError:
                raise
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                config = flag.parser.parse(argument)
                for path in flag._GetOverrides(flag._GetArgv()):
                    reason = _unknown_override(config, path)
                    if reason:
                        raise ConfigError(f"--{holder.name}.{path}: {reason}") from None
                raise ConfigError(f"--{holder.name}={argument} with its overrides: {err}") from None

        flag._parse = parse
        self.__dict__["_mtv_config_flags"].append(holder.name)
        return holder

    def __call__(self, argv, known_only=False):
        prefixes = tuple(f"{name}." for name in self.__dict__["_mtv_config_flags"])
        if prefixes:
            for name in [n for n in list(self) if n.startswith(prefixes)]:
                delattr(self, name)  # the overrides of an earlier parse
        self.argv[:] = list(argv)
        return super().__call__(argv, known_only)
