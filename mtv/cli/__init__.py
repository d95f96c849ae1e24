"""The `mtv` command line: a dispatcher over the command modules beside this file.

Each module defines `FLAGS = flags.FlagValues()` (so flags of different commands never clash),
its flags with `flag_values=FLAGS`, a one-line `HELP`, and `main(argv: list[str]) -> int`,
where `argv` holds the positional arguments left after flag parsing (argv[0] is the program).

Flag names are words joined by underscores (absl's style: `--jpeg_quality`, `--allow_pickle`). The
dashed spellings of earlier releases (`--jpeg-quality`) still work for one release, with a deprecation
warning on stderr. `mtv --verbose COMMAND ...` (or `--verbose` among the flags of a command that has
no `--verbose` of its own) lets TensorFlow's start-up messages through; without it they are hidden.

Without TensorFlow (Keras' JAX backend), `predict`, `zoo`, `cache`, `convert`, `ensemble`, `submission` and
`epic-score` run; `train`, `evaluate`, `data`, `export` and `localize` say that they need TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from absl import flags, logging

from mtv.errors import MTVError
from mtv.utils.lazy_tf import is_tensorflow_missing, missing_tensorflow

COMMANDS = {
    "predict": "mtv.cli.predict",
    "zoo": "mtv.cli.zoo",
    "cache": "mtv.cli.cache",
    "convert": "mtv.cli.convert",
    "export": "mtv.cli.export",
    "train": "mtv.cli.train",
    "evaluate": "mtv.cli.evaluate",
    "data": "mtv.cli.data",
    "ensemble": "mtv.cli.ensemble",
    "submission": "mtv.cli.submission",
    "epic-score": "mtv.cli.epic_score",
    "localize": "mtv.cli.localize",
}

_QUIET = None  # the running mtv.cli.quiet.Quiet of main(), released by a --verbose that run() finds


def _usage() -> str:
    lines = ["usage: mtv COMMAND [ARGS] [--flags]", "", "commands:"]
    for name, module_name in COMMANDS.items():
        try:
            summary = importlib.import_module(module_name).HELP
        except ImportError as err:
            if not is_tensorflow_missing(err):
                continue
            summary = "(needs TensorFlow, which is not installed)"
        lines.append(f"  {name:<12} {summary}")
    lines.append("\n`mtv COMMAND --help` shows a command's flags; `mtv --verbose COMMAND ...` also shows "
                 "TensorFlow's start-up messages.")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Runs `mtv ARGV...` in this process and returns the exit status."""
    while argv and argv[0] in ("--verbose", "--noverbose"):
        if argv[0] == "--verbose" and _QUIET is not None:
            _QUIET.release()
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name.startswith("-"):
        print(f"mtv: unknown option '{name}' before the command\n\n{_usage()}", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"mtv: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as err:
        if not is_tensorflow_missing(err):
            raise
        print(f"mtv {name}: error: {missing_tensorflow(f'`mtv {name}`')}", file=sys.stderr)
        return 1
    fv: flags.FlagValues = module.FLAGS
    fv.unparse_flags()
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
        verbose = "" if "verbose" in fv else "\n  --[no]verbose: show TensorFlow's start-up messages (default: hidden)"
        print(f"usage: mtv {name} ... \n{module.HELP}\n\n{fv.get_help()}{verbose}")
        return 0
    rest = canonical_flag_spellings(fv, rest, f"mtv {name}")
    if "verbose" not in fv:  # the dispatcher's own --verbose, for commands without one of their own
        end = rest.index("--") if "--" in rest else len(rest)
        if "--verbose" in rest[:end] and _QUIET is not None:
            _QUIET.release()
        rest = [a for i, a in enumerate(rest) if i >= end or a not in ("--verbose", "--noverbose")]
    try:
        positional = fv([f"mtv {name}"] + rest)
    except MTVError as e:  # e.g. a --config file that cannot be loaded
        print(f"mtv {name}: error: {e}", file=sys.stderr)
        return 1
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, MTVError):  # absl re-raised a parser's MTVError as IllegalFlagValueError
            print(f"mtv {name}: error: {cause}", file=sys.stderr)
            return 1
        print(f"mtv {name}: {e}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)
    try:
        return int(module.main(positional) or 0)
    except MTVError as e:
        print(f"mtv {name}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # a TensorFlow-only part of the command, imported when it is reached
        if not is_tensorflow_missing(e):
            raise
        print(f"mtv {name}: error: {missing_tensorflow(f'`mtv {name}`')}", file=sys.stderr)
        return 1


_FLAG = re.compile(r"(-{1,2})([A-Za-z][\w-]*)(=.*)?", re.DOTALL)


def canonical_flag_spellings(fv: flags.FlagValues, args: list[str], prog: str) -> list[str]:
    """`args` with old dashed flag names (`--jpeg-quality`, `--noallow-pickle`) spelt as defined, with a warning."""
    out: list[str] = []
    value_next = False  # the previous argument was a non-boolean flag whose value is this argument
    for i, arg in enumerate(args):
        if value_next or arg == "--":
            value_next = False
            if arg == "--":
                return out + args[i:]
            out.append(arg)
            continue
        match = _FLAG.fullmatch(arg)
        if match is None:
            out.append(arg)
            continue
        dashes, written, value = match.groups()
        negated = written.startswith("no") and written not in fv and written[2:].replace("-", "_") in fv
        name = written[2:] if negated else written
        canonical = name.replace("-", "_")
        if "-" in name and name not in fv and canonical in fv:
            new = f"{dashes}{'no' if negated else ''}{canonical}"
            print(f"{prog}: warning: {dashes}{written} is deprecated and will be removed in the next release; "
                  f"use {new}", file=sys.stderr)
            arg = new + (value or "")
        out.append(arg)
        flag = fv[canonical] if canonical in fv else None
        value_next = flag is not None and not flag.boolean and value is None and not negated
    return out


def main() -> None:
    """Console-script entry point: TensorFlow's start-up noise is hidden unless --verbose."""
    global _QUIET
    from mtv.cli.quiet import Quiet

    argv = sys.argv[1:]
    verbose = False
    while argv and argv[0] in ("--verbose", "--noverbose"):
        verbose = argv.pop(0) == "--verbose"
    if verbose:
        _exit(run(argv))
    with Quiet() as _QUIET:
        code = run(argv)
    _QUIET = None
    _exit(code)


def _exit(code: int) -> None:
    """Ends the process once its outputs are flushed, skipping C++ static destructors.

    Every file a command writes is closed (and renamed into place) before `run` returns. What is left at
    exit is TensorFlow's runtime: tf.data and thread-pool threads still joinable when the interpreter tears
    down can make libstdc++ abort ("terminate called without an active exception", exit -6) after a
    successful `mtv train`, seen intermittently in CI. `os._exit` after flushing avoids that teardown.
    """
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()
