"""The model zoo: the registry in zoo/models.json, its schema, class names, and the README table."""

from __future__ import annotations

import copy
import csv
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from mtv.errors import ZooError
from mtv.io.resources import resource_path

SCHEMA_VERSION = 1
KINDS = ("scenic_checkpoint", "embedded")
FORMATS = {"scenic_checkpoint": ("scenic_flax_msgpack",), "embedded": ("keras", "keras_preset")}
ACCURACY_METRICS = (
    "top1", "top5", "action_top1", "action_top5", "verb_top1", "verb_top5", "noun_top1", "noun_top5",
)
EPIC_ENV = "MTV_EPIC_DIR"
EPIC_FILES = {"verb": "EPIC_100_verb_classes.csv", "noun": "EPIC_100_noun_classes.csv"}
WRITE_COMMAND = "python -m mtv.io.registry --write-table"

# name -> (display title, class-name file shipped in mtv/classnames or None, number of classes)
DATASETS: dict[str, tuple[str, str | None, int]] = {
    "kinetics400": ("Kinetics-400", "kinetics400.txt", 400),
    "kinetics600": ("Kinetics-600", "kinetics600.txt", 600),
    "kinetics700": ("Kinetics-700", "kinetics700.txt", 700),
    "moments_in_time": ("Moments in Time", "moments_in_time.txt", 339),
    "ssv2": ("Something-Something v2", "ssv2.txt", 174),
    # Not shipped: the EPIC-KITCHENS annotations are CC BY-NC 4.0 (see class_names).
    "epic_kitchens_100": ("EPIC-KITCHENS-100", None, 397),
    # Our own generated task (mtv.data.synthetic) for the embedded default model.
    "camera_motion": ("Synthetic camera motion", "camera_motion.txt", 13),
}
_DATASET_ALIASES = {
    "k400": "kinetics400", "k600": "kinetics600", "k700": "kinetics700",
    "mit": "moments_in_time", "momentsintime": "moments_in_time",
    "somethingsomethingv2": "ssv2", "sthv2": "ssv2",
    "epic": "epic_kitchens_100", "epickitchens": "epic_kitchens_100", "ek100": "epic_kitchens_100",
}

_NULLABLE = object()  # marker in a type tuple: the field may be JSON null
_COMMON_FIELDS: dict[str, tuple] = {
    "name": (str,),
    "kind": (str,),
    "title": (str,),
    "variant": (str, _NULLABLE),
    "config": (str, _NULLABLE),
    "dataset": (str,),
    "num_classes": (int,),
    "class_splits": (list, _NULLABLE),
    "split_names": (list, _NULLABLE),
    "finetuned_from": (str, _NULLABLE),
    "num_frames": (int,),
    "stride": (int,),
    "test_views": (str,),
    "accuracy": (dict,),
    "params": (int, _NULLABLE),
    "gflops_per_view": (int, float, _NULLABLE),
    "gflops_source": (str, _NULLABLE),
    "params_source": (str, _NULLABLE),
    "sha256": (str, _NULLABLE),
    "format": (str,),
    "license": (str,),
    "license_source": (str,),
    "preprocessing": (dict,),
    "notes": (str, _NULLABLE),
}
# Fields every entry of a kind must have; the other common fields are optional there.
_REQUIRED = {
    "scenic_checkpoint": (
        "name", "kind", "title", "variant", "config", "config_path", "dataset", "num_classes",
        "num_frames", "stride", "test_views", "accuracy", "params", "url", "sha256", "format",
        "license", "license_source", "preprocessing",
    ),
    # A preset shipped inside the package; its accuracy is measured by us, so `accuracy.source`
    # must say how (clips, views, data).
    "embedded": (
        "name", "kind", "title", "path", "dataset", "num_classes", "num_frames", "stride",
        "test_views", "accuracy", "format", "license", "license_source", "preprocessing",
    ),
}
_KIND_FIELDS = {
    "scenic_checkpoint": {"url": (str,), "config_path": (str,)},
    "embedded": {"path": (str,), "config_path": (str, _NULLABLE), "url": (str, _NULLABLE)},
}
_PREPROCESSING_FIELDS = {
    "min_resize": (int,),
    "crop_size": (int,),
    "zero_centering": (bool,),
    "value_range": (list,),
    "channel_order": (str,),
    "source": (str,),
}
_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_VIEWS_RE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def registry_path() -> Path:
    """The one place the registry lives: models.json of the package mtv.zoo (the repo's zoo/models.json)."""
    return resource_path("mtv.zoo", "models.json")


def _type_name(types: tuple) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}
    return " or ".join("null" if t is _NULLABLE else names[t] for t in types)


def _type_ok(value: Any, types: tuple) -> bool:
    if value is None:
        return _NULLABLE in types
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false must not pass as a number
    return any(t is not _NULLABLE and isinstance(value, t) for t in types)


def _check_accuracy(where: str, acc: dict) -> None:
    unknown = sorted(set(acc) - set(ACCURACY_METRICS) - {"source"})
    if unknown:
        raise ZooError(f"{where}: field 'accuracy' has unknown key(s) {unknown}; "
                       f"allowed: {list(ACCURACY_METRICS)} and 'source'")
    if not isinstance(acc.get("source"), str) or not acc["source"].strip():
        raise ZooError(f"{where}: field 'accuracy.source' must be a non-empty string saying where the "
                       "numbers come from (paper, README, or how they were measured)")
    values = {k: v for k, v in acc.items() if k != "source"}
    for key, value in values.items():
        if value is not None and (not _type_ok(value, (int, float)) or not 0 <= value <= 100):
            raise ZooError(f"{where}: field 'accuracy.{key}' must be a percentage in [0, 100] or null, "
                           f"got {value!r}")
    if all(v is None for v in values.values()):
        raise ZooError(f"{where}: field 'accuracy' has no number; expected at least one of "
                       f"{list(ACCURACY_METRICS)}")


def _check_preprocessing(where: str, pre: dict) -> None:
    for key, types in _PREPROCESSING_FIELDS.items():
        if key not in pre:
            raise ZooError(f"{where}: field 'preprocessing.{key}' is missing")
        if not _type_ok(pre[key], types):
            raise ZooError(f"{where}: field 'preprocessing.{key}' must be {_type_name(types)}, "
                           f"got {pre[key]!r}")
    unknown = sorted(set(pre) - set(_PREPROCESSING_FIELDS))
    if unknown:
        raise ZooError(f"{where}: field 'preprocessing' has unknown key(s) {unknown}; "
                       f"allowed: {list(_PREPROCESSING_FIELDS)}")
    vr = pre["value_range"]
    if len(vr) != 2 or not all(_type_ok(v, (int, float)) for v in vr) or vr[0] >= vr[1]:
        raise ZooError(f"{where}: field 'preprocessing.value_range' must be [low, high], got {vr!r}")


def _check_entry(where: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ZooError(f"{where}: expected an object, got {type(entry).__name__}")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ZooError(f"{where}: field 'kind' must be one of {list(KINDS)}, got {kind!r}")
    fields = {**_COMMON_FIELDS, **_KIND_FIELDS[kind]}
    for key in _REQUIRED[kind]:
        if key not in entry:
            raise ZooError(f"{where}: field '{key}' is missing (required for kind '{kind}')")
    for key, value in entry.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ZooError(f"{where}: unknown field '{key}'{hint}")
        if not _type_ok(value, fields[key]):
            raise ZooError(f"{where}: field '{key}' must be {_type_name(fields[key])}, got {value!r}")
    if not _NAME_RE.match(entry["name"]):
        raise ZooError(f"{where}: field 'name' must be lower-case words joined by '-', "
                       f"got {entry['name']!r}")
    if entry["format"] not in FORMATS[kind]:
        raise ZooError(f"{where}: field 'format' must be one of {list(FORMATS[kind])} for kind "
                       f"'{kind}', got {entry['format']!r}")
    if entry["dataset"] not in DATASETS:
        raise ZooError(f"{where}: field 'dataset' must be one of {list(DATASETS)}, "
                       f"got {entry['dataset']!r}")
    for key in ("num_classes", "num_frames", "stride"):
        if entry[key] < 1:
            raise ZooError(f"{where}: field '{key}' must be >= 1, got {entry[key]}")
    if entry["num_classes"] != DATASETS[entry["dataset"]][2]:
        raise ZooError(f"{where}: field 'num_classes' is {entry['num_classes']} but dataset "
                       f"'{entry['dataset']}' has {DATASETS[entry['dataset']][2]} classes")
    if not _VIEWS_RE.match(entry["test_views"]):
        raise ZooError(f"{where}: field 'test_views' must look like '4x3' (temporal x spatial), "
                       f"got {entry['test_views']!r}")
    splits, split_names = entry.get("class_splits"), entry.get("split_names")
    if (splits is None) != (split_names is None):
        raise ZooError(f"{where}: fields 'class_splits' and 'split_names' must both be set or both null")
    if splits is not None:
        if not all(_type_ok(s, (int,)) and s > 0 for s in splits) or sum(splits) != entry["num_classes"]:
            raise ZooError(f"{where}: field 'class_splits' must be positive integers summing to "
                           f"num_classes={entry['num_classes']}, got {splits!r}")
        if len(split_names) != len(splits) or not all(isinstance(n, str) for n in split_names):
            raise ZooError(f"{where}: field 'split_names' must name each of the {len(splits)} "
                           f"class_splits, got {split_names!r}")
    sha = entry.get("sha256")
    if sha is not None and not _SHA_RE.match(sha):
        raise ZooError(f"{where}: field 'sha256' must be 64 lower-case hex digits or null, got {sha!r}")
    if entry.get("gflops_per_view") is not None and not entry.get("gflops_source"):
        raise ZooError(f"{where}: field 'gflops_source' must say where 'gflops_per_view' comes from")
    if kind == "scenic_checkpoint" and not re.match(r"^(https?|file)://", entry["url"]):
        raise ZooError(f"{where}: field 'url' must be an http(s):// or file:// URL, got {entry['url']!r}")
    if kind == "embedded":
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise ZooError(f"{where}: field 'path' must be relative to the mtv package directory "
                           f"without '..', got {entry['path']!r}")
    _check_accuracy(where, entry["accuracy"])
    _check_preprocessing(where, entry["preprocessing"])


def load_registry(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Reads and validates the registry; returns {name: entry} in file order."""
    path = Path(path) if path is not None else registry_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"model registry not found at {path}") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ZooError(f"{path}: expected an object with a 'models' list")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ZooError(f"{path}: schema_version must be {SCHEMA_VERSION}, got {doc.get('schema_version')!r}")
    registry: dict[str, dict] = {}
    for i, entry in enumerate(doc["models"]):
        label = entry.get("name") if isinstance(entry, dict) else None
        where = f"{path}: entry '{label}'" if label else f"{path}: models[{i}]"
        _check_entry(where, entry)
        if entry["name"] in registry:
            raise ZooError(f"{where}: duplicate name")
        registry[entry["name"]] = entry
    for name, entry in registry.items():
        parent = entry.get("finetuned_from")
        if parent is not None and parent not in registry:
            raise ZooError(f"{path}: entry '{name}': field 'finetuned_from' names unknown model '{parent}'")
    return registry


def list_models() -> list[str]:
    """Names of every checkpoint in the zoo, in registry order."""
    return list(load_registry())


def _resolve_name(name: str, registry: dict[str, dict]) -> str | None:
    if name in registry:
        return name
    normal = name.strip().lower().replace("_", "-")  # accept Scenic's file names (mtv_b_k400)
    return normal if normal in registry else None


def get_entry(name: str) -> dict:
    """The registry entry of one model (a copy); unknown names raise ZooError with a suggestion."""
    registry = load_registry()
    key = _resolve_name(str(name), registry)
    if key is None:
        close = difflib.get_close_matches(str(name).lower().replace("_", "-"), registry, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ZooError(f"unknown model '{name}'.{hint} Known models: {', '.join(registry)} "
                       "(`mtv zoo list` shows them).")
    return copy.deepcopy(registry[key])


def embedded_path(name_or_entry: str | dict) -> Path:
    """Where an `embedded` entry's preset lives inside the installed package."""
    entry = get_entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    if entry.get("kind") != "embedded":
        raise ZooError(f"model '{entry.get('name')}' is a {entry.get('kind')}, not an embedded preset")
    path = resource_path("mtv", *Path(entry["path"]).parts)
    if not path.exists():
        raise ZooError(f"embedded preset of '{entry['name']}' is missing: {path} (a broken install?)")
    return path


def fetch_checkpoint(name: str, *, progress: bool = True) -> Path:
    """Downloads (or reuses) the upstream checkpoint file of a zoo model; returns its cached path."""
    from mtv.io.download import fetch

    entry = get_entry(name)
    if entry["kind"] != "scenic_checkpoint":
        raise ZooError(f"model '{entry['name']}' is {entry['kind']}; it has no upstream checkpoint to fetch")
    return fetch(entry["url"], sha256=entry["sha256"], name=f"{entry['name']}/checkpoint", progress=progress)


def _dataset(value: str) -> str:
    key = value.strip().lower()
    if key in DATASETS:
        return key
    squashed = re.sub(r"[-_ ]", "", key)
    for name in DATASETS:
        if re.sub(r"[-_ ]", "", name) == squashed:
            return name
    if squashed in _DATASET_ALIASES:
        return _DATASET_ALIASES[squashed]
    raise ZooError(f"unknown dataset or model '{value}'; datasets: {', '.join(DATASETS)}; "
                   "models: `mtv zoo list`")


def _read_epic_csv(path: Path, expected: int) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ZooError(f"Epic-Kitchens class file not found: {path}") from None
    if not rows or "id" not in rows[0] or "key" not in rows[0]:
        raise ZooError(f"{path}: expected CSV columns 'id' and 'key' (EPIC-KITCHENS-100 format)")
    try:
        by_id = {int(r["id"]): r["key"] for r in rows}
    except ValueError as e:
        raise ZooError(f"{path}: column 'id' must hold integers: {e}") from None
    if sorted(by_id) != list(range(expected)):
        raise ZooError(f"{path}: expected ids 0..{expected - 1} ({expected} classes), "
                       f"found {len(by_id)} ids from {min(by_id)} to {max(by_id)}")
    return [by_id[i] for i in range(expected)]


def _epic_class_names(entry: dict | None, epic_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    where = epic_dir if epic_dir is not None else os.environ.get(EPIC_ENV)
    if not where:
        raise ZooError(
            "Epic-Kitchens class names are not shipped with mtv (the annotations are CC BY-NC 4.0). "
            f"Pass epic_dir=... or set {EPIC_ENV} to a directory holding {EPIC_FILES['verb']} and "
            f"{EPIC_FILES['noun']} (github.com/epic-kitchens/epic-kitchens-100-annotations).")
    folder = Path(where).expanduser()
    if not folder.is_dir():
        raise ZooError(f"Epic-Kitchens directory not found: {folder}")
    splits = (entry or {}).get("class_splits") or [300, 97]
    names = (entry or {}).get("split_names") or ["noun", "verb"]
    result: dict[str, list[str]] = {}
    for split, count in zip(names, splits, strict=True):
        if split not in EPIC_FILES:
            raise ZooError(f"no Epic-Kitchens class file for split '{split}'; known: {list(EPIC_FILES)}")
        result[split] = _read_epic_csv(folder / EPIC_FILES[split], count)
    return result


def class_names(
    dataset_or_entry: str | dict, *, epic_dir: str | os.PathLike | None = None
) -> list[str] | dict[str, list[str]]:
    """Class names in logit order: a list, or {head: list} for the multi-head Epic models."""
    entry = None
    if isinstance(dataset_or_entry, dict):
        entry = dataset_or_entry
        dataset = _dataset(str(entry.get("dataset")))
    else:
        registry = load_registry()
        key = _resolve_name(dataset_or_entry, registry)
        if key is not None:
            entry = registry[key]
            dataset = entry["dataset"]
        else:
            dataset = _dataset(dataset_or_entry)
    if dataset == "epic_kitchens_100":
        return _epic_class_names(entry, epic_dir)
    _, filename, count = DATASETS[dataset]
    path = resource_path("mtv", "classnames", filename)
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ZooError(f"class-name file missing: {path} (a broken install?)") from None
    if len(names) != count:
        raise ZooError(f"{path}: expected {count} class names, found {len(names)}")
    return names


# ---------------------------------------------------------------------------------------------- text


def _format_accuracy(entry: dict) -> str:
    acc = entry["accuracy"]
    parts = []
    if acc.get("top1") is not None:
        parts.append(f"{acc['top1']:.1f}")
    for head in ("action", "verb", "noun"):
        if acc.get(f"{head}_top1") is not None:
            parts.append(f"{acc[f'{head}_top1']:.1f} ({head})")
    return ", ".join(parts) or "—"


def _format_params(params: int | None) -> str:
    return "—" if params is None else f"{params / 1e6:.1f}M"


def _format_gflops(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _source_link(entry: dict) -> str:
    if entry["kind"] == "embedded":
        return f"embedded: `mtv/{entry['path']}`"
    url = entry["url"]
    return f"[{url.rstrip('/').rsplit('/', 1)[-1]}]({url})"


def describe(name: str) -> str:
    """A human-readable summary of one zoo entry."""
    e = get_entry(name)
    acc = e["accuracy"]
    pre = e["preprocessing"]
    lines = [
        f"{e['name']}: {e['title']} on {DATASETS[e['dataset']][0]}",
        f"  kind:          {e['kind']} ({e['format']})",
    ]
    if e.get("variant"):
        lines.append(f"  variant:       {e['variant']}")
    if e.get("config"):
        where = f"  ({e['config_path']})" if e.get("config_path") else ""
        lines.append(f"  config:        {e['config']}{where}")
    classes = f"{e['num_classes']}"
    if e.get("class_splits"):
        heads = zip(e["split_names"], e["class_splits"], strict=True)
        classes += " = " + " + ".join(f"{n} {s}" for s, n in heads)
    lines += [
        f"  classes:       {classes}",
        f"  input:         {e['num_frames']} frames, stride {e['stride']}, "
        f"resize {pre['min_resize']} / crop {pre['crop_size']}, values in {pre['value_range']}",
        f"  test views:    {e['test_views']} (temporal x spatial)",
    ]
    metrics = ", ".join(f"{k} {v}" for k, v in acc.items() if k != "source" and v is not None)
    lines.append(f"  accuracy:      {metrics}  [{acc['source']}]")
    lines.append(f"  params:        {_format_params(e.get('params'))}")
    gf = e.get("gflops_per_view")
    gf_source = f"  [{e['gflops_source']}]" if gf is not None else ""
    lines.append(f"  GFLOPs/view:   {_format_gflops(gf)}{gf_source}")
    if e.get("finetuned_from"):
        lines.append(f"  fine-tuned from: {e['finetuned_from']}")
    if e["kind"] == "embedded":
        lines.append(f"  path:          mtv/{e['path']}")
    else:
        lines.append(f"  url:           {e['url']}")
    lines.append(f"  sha256:        {e.get('sha256') or 'unknown (recorded on first download)'}")
    lines.append(f"  license:       {e['license']}  [{e['license_source']}]")
    if e.get("notes"):
        lines.append(f"  notes:         {e['notes']}")
    return "\n".join(lines)


def render_table() -> str:
    """The Markdown table of every registry entry."""
    header = ("| Name | Model | Dataset | Views | Frames × stride | Top-1 (%) | Params | GFLOPs/view "
              "| License | Checkpoint |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for e in load_registry().values():
        rows.append(
            f"| `{e['name']}` | {e['title']} | {DATASETS[e['dataset']][0]} | {e['test_views']} "
            f"| {e['num_frames']} × {e['stride']} | {_format_accuracy(e)} "
            f"| {_format_params(e.get('params'))} | {_format_gflops(e.get('gflops_per_view'))} "
            f"| {e['license']} | {_source_link(e)} |"
        )
    return "\n".join(rows) + "\n"


def render_readme() -> str:
    """The whole generated zoo/README.md: a short header and the table."""
    return (
        "# Model zoo\n\n"
        f"<!-- Generated from zoo/models.json by `{WRITE_COMMAND}`; do not edit by hand. -->\n\n"
        "Every checkpoint `mtv` knows, from [`models.json`](models.json). Load one with "
        "`mtv.load(\"NAME\")` or fetch it with `mtv zoo fetch NAME`; `mtv zoo info NAME` prints the whole "
        "entry, with the source of every number.\n\n"
        "- **Views**: temporal clips × spatial crops averaged at test time.\n"
        "- **Top-1**: as published (Scenic's MTV README) unless the entry's `accuracy.source` says it was "
        "measured; Epic-Kitchens rows give action accuracy.\n"
        "- **GFLOPs/view**: one clip, multiply-add counted once; `—` where not known yet.\n\n"
        + render_table()
    )


def write_table(path: str | os.PathLike | None = None) -> Path:
    """Regenerates zoo/README.md (or `path`) from the registry; returns the path written."""
    target = Path(path) if path is not None else registry_path().with_name("README.md")
    target.write_text(render_readme(), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m mtv.io.registry --write-table [PATH] | --check`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mtv.io.registry", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-table", nargs="?", const="", metavar="PATH",
                       help="regenerate zoo/README.md (or PATH) from zoo/models.json")
    group.add_argument("--check", action="store_true", help="exit 1 if zoo/README.md is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            readme = registry_path().with_name("README.md")
            current = readme.read_text(encoding="utf-8") if readme.exists() else ""
            if current != render_readme():
                print(f"{readme} is stale; run `{WRITE_COMMAND}`", file=sys.stderr)
                return 1
            return 0
        print(write_table(args.write_table or None))
        return 0
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
