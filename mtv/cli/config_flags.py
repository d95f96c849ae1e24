"""absl FlagValues that lets ml_collections' `--config.FIELD=VALUE` overrides work in-process.

config_flags finds override flags by reading `sys.argv`, which is not what `mtv.cli.run([...])` parses.
This FlagValues hands config_flags the arguments it is actually parsing, and forgets the override flags
of an earlier parse so the same process can parse again with another config.
"""

from __future__ import annotations

from absl import flags


class ConfigFlagValues(flags.FlagValues):
    """FlagValues whose config file flags see the argv given to `__call__`."""

    def __init__(self):
        super().__init__()
        self.__dict__["_mtv_argv"] = []

    @property
    def argv(self) -> list:
        """The live list config_flags reads (pass it as `sys_argv=` to DEFINE_config_file)."""
        return self.__dict__["_mtv_argv"]

    def __call__(self, argv, known_only=False):
        prefixes = tuple(f"{name}." for name, flag in self._flags().items()
                         if type(flag).__name__ == "_ConfigFlag")
        for name in [n for n in self._flags() if n.startswith(prefixes)] if prefixes else []:
            delattr(self, name)
        self.argv[:] = list(argv)
        return super().__call__(argv, known_only)
