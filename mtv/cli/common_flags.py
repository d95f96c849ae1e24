"""Flags that several commands share, defined once so their names and help never drift apart."""

from __future__ import annotations

from absl import flags


def define_allow_pickle(flag_values: flags.FlagValues) -> None:
    """`--allow_pickle`: opt in to reading .pkl results files (the official Epic layout)."""
    flags.DEFINE_bool("allow_pickle", False, "Allow reading .pkl results (unpickling runs code from the file).",
                      flag_values=flag_values)
