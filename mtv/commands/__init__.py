"""Subcommands of the `mtv` CLI: one module each, with its own absl FlagValues.

Each module defines `FLAGS = flags.FlagValues()` (so flags of different commands never clash),
its flags with `flag_values=FLAGS`, a one-line `HELP`, and `main(argv: list[str]) -> int`,
where `argv` holds the positional arguments left after flag parsing (argv[0] is the program).
"""

COMMANDS = {
    "predict": "mtv.commands.predict",
    "zoo": "mtv.commands.zoo",
    "convert": "mtv.commands.convert",
    "export": "mtv.commands.export",
    "train": "mtv.commands.train",
    "evaluate": "mtv.commands.evaluate",
    "data": "mtv.commands.data",
    "ensemble": "mtv.commands.ensemble",
    "submission": "mtv.commands.submission",
    "epic-score": "mtv.commands.epic_score",
}
