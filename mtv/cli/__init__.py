"""The `mtv` command line: a dispatcher over the command modules beside this file.

Each module defines `FLAGS = flags.FlagValues()` (so flags of different commands never clash),
its flags with `flag_values=FLAGS`, a one-line `HELP`, and `main(argv: list[str]) -> int`,
where `argv` holds the positional arguments left after flag parsing (argv[0] is the program).
"""

from __future__ import annotations

import importlib
import sys

from absl import flags, logging

from mtv.errors import MTVError

COMMANDS = {
    "predict": "mtv.cli.predict",
    "zoo": "mtv.cli.zoo",
    "convert": "mtv.cli.convert",
    "export": "mtv.cli.export",
    "train": "mtv.cli.train",
    "evaluate": "mtv.cli.evaluate",
    "data": "mtv.cli.data",
    "ensemble": "mtv.cli.ensemble",
    "submission": "mtv.cli.submission",
    "epic-score": "mtv.cli.epic_score",
}


def _usage() -> str:
    lines = ["usage: mtv COMMAND [ARGS] [--flags]", "", "commands:"]
    for name, module_name in COMMANDS.items():
        try:
            summary = importlib.import_module(module_name).HELP
        except ImportError:
            continue
        lines.append(f"  {name:<12} {summary}")
    lines.append("\n`mtv COMMAND --help` shows a command's flags.")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Runs `mtv ARGV...` in this process and returns the exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"mtv: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    fv: flags.FlagValues = module.FLAGS
    fv.unparse_flags()
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
        print(f"usage: mtv {name} ... \n{module.HELP}\n\n{fv.get_help()}")
        return 0
    try:
        positional = fv([f"mtv {name}"] + rest)
    except flags.Error as e:
        print(f"mtv {name}: {e}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)
    try:
        return int(module.main(positional) or 0)
    except MTVError as e:
        print(f"mtv {name}: error: {e}", file=sys.stderr)
        return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
