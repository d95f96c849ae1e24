"""absl FlagValues that lets ml_collections' `--config.FIELD=VALUE` overrides work in-process.

config_flags finds override flags by reading `sys.argv`, which is not what `mtv.cli.run([...])` parses.
This FlagValues hands config_flags the arguments it is actually parsing, and forgets the override flags
of an earlier parse so the same process can parse again with another config. It knows which flags are
config files because it defined them (`define_config_file`), not by inspecting absl's flag classes.
"""

from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import config_flags


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
        self.__dict__["_mtv_config_flags"].append(holder.name)
        return holder

    def __call__(self, argv, known_only=False):
        prefixes = tuple(f"{name}." for name in self.__dict__["_mtv_config_flags"])
        if prefixes:
            for name in [n for n in list(self) if n.startswith(prefixes)]:
                delattr(self, name)  # the overrides of an earlier parse
        self.argv[:] = list(argv)
        return super().__call__(argv, known_only)
