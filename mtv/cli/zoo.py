"""`mtv zoo list | info NAME | fetch NAME [--from_file PATH]`: browse and fetch the model zoo."""

from __future__ import annotations

import json
import sys

from absl import flags

from mtv.io import registry as zoo

FLAGS = flags.FlagValues()
flags.DEFINE_boolean("json", False, "Print JSON (list, info) instead of text.", flag_values=FLAGS)
flags.DEFINE_string("from_file", None, "fetch: convert this local copy of the upstream Scenic checkpoint "
                    "instead of downloading it.", flag_values=FLAGS)

HELP = "List, describe and fetch the pretrained checkpoints of the model zoo (list | info NAME | fetch NAME)."

_USAGE = "usage: mtv zoo list [--json] | mtv zoo info NAME [--json] | mtv zoo fetch NAME [--from_file PATH]"


def _list() -> int:
    registry = zoo.load_registry()
    if FLAGS.json:
        print(json.dumps(list(registry.values()), indent=2))
        return 0
    rows = [("NAME", "DATASET", "TOP-1", "VIEWS", "FRAMES")]
    for e in registry.values():
        acc = e["accuracy"]
        top1 = acc.get("top1") if acc.get("top1") is not None else acc.get("action_top1")
        rows.append((e["name"], zoo.DATASETS[e["dataset"]][0], "—" if top1 is None else f"{top1:.1f}",
                     e["test_views"], f"{e['num_frames']}x{e['stride']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _info(name: str) -> int:
    if FLAGS.json:
        print(json.dumps(zoo.get_entry(name), indent=2))
    else:
        print(zoo.describe(name))
    return 0


def _fetch(name: str) -> int:
    from mtv.io.loading import fetch_preset  # heavy (TensorFlow): only imported when fetching

    entry = zoo.get_entry(name)
    path = fetch_preset(entry["name"], from_file=FLAGS.from_file)
    print(path)
    return 0


def main(argv: list[str]) -> int:
    """Runs one `mtv zoo` subcommand; argv[0] is the program name."""
    args = list(argv[1:])
    if not args:
        print(_USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    expected = {"list": 0, "info": 1, "fetch": 1}
    if command not in expected:
        print(f"mtv zoo: unknown subcommand '{command}'\n{_USAGE}", file=sys.stderr)
        return 2
    if len(rest) != expected[command]:
        print(f"mtv zoo {command}: expected {expected[command]} argument(s), got {rest}\n{_USAGE}",
              file=sys.stderr)
        return 2
    if FLAGS.from_file is not None and command != "fetch":
        print("mtv zoo: --from_file only applies to `mtv zoo fetch`", file=sys.stderr)
        return 2
    if command == "list":
        return _list()
    if command == "info":
        return _info(rest[0])
    return _fetch(rest[0])
