"""`mtv cache list | verify | clear NAME|--all`: inspect and repair the download/preset cache."""

from __future__ import annotations

import json
import sys

from absl import flags

from mtv.io import download

FLAGS = flags.FlagValues()
flags.DEFINE_boolean("json", False, "list: print JSON instead of text.", flag_values=FLAGS)
flags.DEFINE_boolean("all", False, "clear: remove everything in the cache.", flag_values=FLAGS)

HELP = "Inspect and repair the model cache ($MTV_CACHE_DIR): list | verify | clear NAME|--all."

_USAGE = "usage: mtv cache list [--json] | mtv cache verify | mtv cache clear NAME | mtv cache clear --all"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _list() -> int:
    entries = download.cache_entries()
    if FLAGS.json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "path": str(e.path), "size": e.size} for e in entries],
                         indent=2))
        return 0
    print(f"cache: {download.cache_dir(create=False)}")
    rows = [("KIND", "NAME", "SIZE", "PATH")] + [(e.kind, e.name, _size(e.size), str(e.path)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _verify() -> int:
    problems = 0
    for entry in download.cache_entries():
        problem = download.verify_entry(entry)
        print(f"{'ok' if problem is None else 'BAD':<4} {entry.kind:<9} {entry.name}"
              + ("" if problem is None else f": {problem}; run `mtv cache clear {entry.name}`"))
        problems += problem is not None
    for path in download.stale_temporaries():
        print(f"BAD  temp      {path}: left by an interrupted write; `mtv cache clear --all` or delete it")
        problems += 1
    print(f"{problems} problem(s)" if problems else "the cache is intact")
    return 1 if problems else 0


def _clear(name: str | None) -> int:
    removed = download.clear_cache(name)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print("nothing to remove")
    return 0


def main(argv: list[str]) -> int:
    """Runs one `mtv cache` subcommand; argv[0] is the program name."""
    args = list(argv[1:])
    if not args or args[0] not in ("list", "verify", "clear"):
        print((f"mtv cache: unknown subcommand '{args[0]}'\n" if args else "") + _USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if FLAGS.all and command != "clear":
        print("mtv cache: --all only applies to `mtv cache clear`", file=sys.stderr)
        return 2
    expected = 1 if command == "clear" and not FLAGS.all else 0
    if len(rest) != expected:
        what = "a NAME (a URL, zoo model name or path shown by `mtv cache list`) or --all, not both"
        print(f"mtv cache {command}: expected {what if command == 'clear' else 'no arguments'}, got {rest}\n"
              f"{_USAGE}", file=sys.stderr)
        return 2
    if command == "list":
        return _list()
    if command == "verify":
        return _verify()
    return _clear(None if FLAGS.all else rest[0])
