"""The model-zoo registry, its schema checks, class names, the generated README and `mtv zoo`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from mtv.cli import run
from mtv.errors import ZooError
from mtv.io import registry as zoo

REPO = Path(__file__).resolve().parents[1]
SCENIC_BUCKET = "https://storage.googleapis.com/scenic-bucket/mtv/"

# Published top-1, from google-research/scenic scenic/projects/mtv/README.md (Model Zoo table).
PUBLISHED = {
    "mtv-b-k400": ("mtv_b_k400", "k400_mtv_b2_cva", "kinetics400", "4x3", 81.8),
    "mtv-b-k600": ("mtv_b_k600", "k600_mtv_b2_cva", "kinetics600", "4x3", 83.8),
    "mtv-b-k700": ("mtv_b_k700", "k700_mtv_b2_cva", "kinetics700", "4x3", 73.5),
    "mtv-l-k600": ("mtv_l_k600", "k600_mtv_l2_cva", "kinetics600", "4x3", 84.4),
    "mtv-l-k700": ("mtv_l_k700", "k700_mtv_l2_cva", "kinetics700", "4x3", 75.2),
    "mtv-l-mit": ("mtv_l_mit", "mit_mtv_l2_cva", "moments_in_time", "1x3", 42.5),
    "mtv-b-ek-k400": ("mtv_b_ek_k400", "epic_mtv_b2_cva", "epic_kitchens_100", "4x1", 46.7),
    "mtv-b-ek-k700": ("mtv_b_ek_k700", "epic_mtv_b2_cva", "epic_kitchens_100", "4x1", 48.0),
}


@pytest.fixture
def registry_doc() -> dict:
    return json.loads(zoo.registry_path().read_text())


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------------------------------ registry


def test_registry_path_is_the_repo_zoo_file_found_as_package_data():
    from importlib.resources import files

    # Found through importlib.resources (package mtv.zoo), never relative to the source tree; in this
    # editable install that package is the repository's top-level zoo/ folder.
    assert zoo.registry_path() == files("mtv.zoo") / "models.json"
    assert zoo.registry_path() == REPO / "zoo" / "models.json"


EMBEDDED = ["camera-motion"]


def test_registry_lists_the_eight_released_checkpoints():
    assert zoo.list_models() == list(PUBLISHED) + EMBEDDED


def test_embedded_default_is_registered_and_shipped():
    e = zoo.get_entry("camera-motion")
    assert e["kind"] == "embedded" and e["num_classes"] == 13
    path = zoo.embedded_path(e)
    assert (path / "weights.msgpack").stat().st_size < 5_000_000
    assert zoo.class_names("camera-motion") == json.loads((path / "metadata.json").read_text())["class_names"]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_entry_matches_the_scenic_model_zoo(name):
    upstream, config, dataset, views, top1 = PUBLISHED[name]
    e = zoo.get_entry(name)
    assert e["url"] == SCENIC_BUCKET + upstream
    assert e["config"] == config
    assert e["dataset"] == dataset
    assert e["test_views"] == views
    assert e["format"] == "scenic_flax_msgpack"
    assert e["sha256"] is None
    assert e["license"] == "Apache-2.0"
    metric = "action_top1" if dataset == "epic_kitchens_100" else "top1"
    assert e["accuracy"][metric] == top1
    assert "scenic" in e["accuracy"]["source"].lower()
    if dataset == "epic_kitchens_100":
        assert e["class_splits"] == [300, 97] and e["split_names"] == ["noun", "verb"]
        assert e["finetuned_from"] == name.replace("-ek", "")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_entry_agrees_with_its_config_file(name):
    from mtv.io.configs import load_config

    e = zoo.get_entry(name)
    assert (REPO / e["config_path"]).is_file()
    assert Path(e["config_path"]).stem == e["config"]
    cfg = load_config(e["config"])
    ds = cfg.dataset_configs
    assert (e["num_frames"], e["stride"]) == (ds.num_frames, ds.stride)
    classes = sum(ds.class_splits) if ds.get("class_splits") else ds.num_classes
    assert e["num_classes"] == classes
    assert e["class_splits"] == (list(ds.class_splits) if ds.get("class_splits") else None)
    crops = 3 if ds.do_three_spatial_crops else 1
    assert e["test_views"] == f"{ds.num_test_clips}x{crops}"
    pre = e["preprocessing"]
    assert (pre["min_resize"], pre["crop_size"], pre["zero_centering"]) == (
        ds.min_resize, ds.crop_size, ds.zero_centering)
    assert cfg.experiment_name.endswith(e["variant"])


def test_get_entry_accepts_scenic_file_names_and_returns_a_copy():
    e = zoo.get_entry("MTV_B_K400")
    assert e["name"] == "mtv-b-k400"
    e["accuracy"]["top1"] = 0.0
    assert zoo.get_entry("mtv-b-k400")["accuracy"]["top1"] == 81.8


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ZooError, match=r"unknown model 'mtv-b-k40'.*Did you mean 'mtv-b-k400'"):
        zoo.get_entry("mtv-b-k40")


def test_describe_names_the_sources():
    text = zoo.describe("mtv-l-mit")
    assert "mtv-l-mit" in text and "Moments in Time" in text
    assert SCENIC_BUCKET + "mtv_l_mit" in text
    assert "42.5" in text and "1x3" in text and "32 frames, stride 3" in text


# ------------------------------------------------------------------------------------ schema checks


def _mutate(doc: dict, index: int, **changes) -> dict:
    doc = copy.deepcopy(doc)
    for key, value in changes.items():
        if value is _DELETE:
            del doc["models"][index][key]
        else:
            doc["models"][index][key] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": _DELETE}, r"entry 'mtv-b-k400'.*field 'url' is missing"),
        ({"num_frames": "32"}, r"entry 'mtv-b-k400'.*field 'num_frames' must be integer"),
        ({"num_frames": True}, r"field 'num_frames' must be integer"),
        ({"test_views": "4 by 3"}, r"field 'test_views' must look like '4x3'"),
        ({"dataset": "kinetics-400"}, r"field 'dataset' must be one of"),
        ({"num_classes": 600}, r"field 'num_classes' is 600 but dataset 'kinetics400' has 400"),
        ({"sha256": "abc"}, r"field 'sha256' must be 64 lower-case hex digits"),
        ({"lisence": "MIT"}, r"unknown field 'lisence' \(did you mean 'license'\?\)"),
        ({"kind": "tarball"}, r"field 'kind' must be one of"),
        ({"format": "keras"}, r"field 'format' must be one of \['scenic_flax_msgpack'\]"),
        ({"accuracy": {"top1": 81.8}}, r"field 'accuracy.source' must be a non-empty string"),
        ({"accuracy": {"top1": 181.8, "source": "x"}}, r"field 'accuracy.top1' must be a percentage"),
        ({"accuracy": {"top1": None, "source": "x"}}, r"field 'accuracy' has no number"),
        ({"gflops_source": None}, r"field 'gflops_source' must say where"),
        ({"class_splits": [300, 99], "split_names": ["noun", "verb"]},
         r"field 'class_splits' must be positive integers summing to num_classes=400"),
        ({"class_splits": [300, 100]}, r"'class_splits' and 'split_names' must both be set"),
        ({"finetuned_from": "mtv-x"}, r"field 'finetuned_from' names unknown model 'mtv-x'"),
        ({"url": "ftp://host/x"}, r"field 'url' must be an http\(s\):// or file:// URL"),
        ({"name": "MTV B"}, r"field 'name' must be lower-case words"),
    ],
)
def test_schema_errors_name_the_entry_and_field(tmp_path, registry_doc, changes, message):
    path = _write(tmp_path, _mutate(registry_doc, 0, **changes))
    with pytest.raises(ZooError, match=message):
        zoo.load_registry(path)


def test_preprocessing_is_checked(tmp_path, registry_doc):
    doc = copy.deepcopy(registry_doc)
    doc["models"][2]["preprocessing"]["value_range"] = [1.0, -1.0]
    with pytest.raises(ZooError, match=r"entry 'mtv-b-k700'.*'preprocessing.value_range'"):
        zoo.load_registry(_write(tmp_path, doc))
    del doc["models"][2]["preprocessing"]["crop_size"]
    with pytest.raises(ZooError, match=r"'preprocessing.crop_size' is missing"):
        zoo.load_registry(_write(tmp_path, doc))


def test_duplicate_names_and_bad_files_are_rejected(tmp_path, registry_doc):
    doc = copy.deepcopy(registry_doc)
    doc["models"].append(copy.deepcopy(doc["models"][0]))
    with pytest.raises(ZooError, match=r"entry 'mtv-b-k400': duplicate name"):
        zoo.load_registry(_write(tmp_path, doc))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ZooError, match=r"bad.json: not valid JSON"):
        zoo.load_registry(tmp_path / "bad.json")
    with pytest.raises(ZooError, match="not found"):
        zoo.load_registry(tmp_path / "missing.json")
    with pytest.raises(ZooError, match="schema_version must be 1"):
        zoo.load_registry(_write(tmp_path, {**doc, "schema_version": 2}))


def _embedded_entry(**overrides) -> dict:
    entry = {
        "name": "mtv-tiny-k400-demo",
        "kind": "embedded",
        "title": "MTV tiny",
        "path": "embedded/mtv_tiny",
        "format": "keras_preset",
        "dataset": "kinetics400",
        "num_classes": 400,
        "num_frames": 8,
        "stride": 2,
        "test_views": "1x1",
        "accuracy": {"top1": 20.0, "source": "measured on 3 clips, 1x1 views"},
        "license": "Apache-2.0",
        "license_source": "this repository",
        "preprocessing": {"min_resize": 64, "crop_size": 56, "zero_centering": True,
                          "value_range": [-1.0, 1.0], "channel_order": "RGB", "source": "test"},
    }
    entry.update(overrides)
    return entry


def test_embedded_entries_are_part_of_the_schema(tmp_path, registry_doc):
    doc = copy.deepcopy(registry_doc)
    doc["models"].append(_embedded_entry())
    registry = zoo.load_registry(_write(tmp_path, doc))
    assert registry["mtv-tiny-k400-demo"]["kind"] == "embedded"

    doc["models"][-1] = _embedded_entry(path="../outside")
    with pytest.raises(ZooError, match=r"entry 'mtv-tiny-k400-demo'.*field 'path' must be relative"):
        zoo.load_registry(_write(tmp_path, doc))
    doc["models"][-1] = _embedded_entry(format="scenic_flax_msgpack")
    with pytest.raises(ZooError, match=r"field 'format' must be one of \['keras', 'keras_preset'\]"):
        zoo.load_registry(_write(tmp_path, doc))
    entry = _embedded_entry()
    del entry["accuracy"]
    doc["models"][-1] = entry
    with pytest.raises(ZooError, match=r"field 'accuracy' is missing \(required for kind 'embedded'\)"):
        zoo.load_registry(_write(tmp_path, doc))


def test_embedded_path_points_inside_the_package(tmp_path, registry_doc, monkeypatch):
    doc = copy.deepcopy(registry_doc)
    doc["models"].append(_embedded_entry(path="classnames"))  # a folder that exists in the package
    monkeypatch.setattr(zoo, "registry_path", lambda: _write(tmp_path, doc))
    assert zoo.embedded_path("mtv-tiny-k400-demo") == REPO / "mtv" / "classnames"
    with pytest.raises(ZooError, match="not an embedded preset"):
        zoo.embedded_path("mtv-b-k400")
    with pytest.raises(ZooError, match="no upstream checkpoint"):
        zoo.fetch_checkpoint("mtv-tiny-k400-demo")


# -------------------------------------------------------------------------------------- class names


@pytest.mark.parametrize(
    ("dataset", "count"),
    [("kinetics400", 400), ("kinetics600", 600), ("kinetics700", 700), ("moments_in_time", 339),
     ("ssv2", 174)],
)
def test_class_name_files_have_the_dataset_sizes(dataset, count):
    names = zoo.class_names(dataset)
    assert len(names) == count
    assert len(set(names)) == count
    assert all(n and n == n.strip() for n in names)
    lines = (REPO / "mtv" / "classnames" / f"{dataset}.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines) == count + 1  # one name a line, newline-terminated


def test_kinetics_order_matches_the_labelled_test_clips():
    # Class indices given for the shared test videos in ../shared/data/videos/SOURCES.md.
    names = zoo.class_names("k400")
    assert names[6] == "arm wrestling"
    assert names[62] == "cleaning pool"
    assert names[129] == "flipping pancake"
    for dataset in ("kinetics400", "kinetics600", "kinetics700", "ssv2"):
        names = zoo.class_names(dataset)
        assert names == sorted(names, key=str.lower), dataset


def test_moments_in_time_keeps_the_dataset_order():
    names = zoo.class_names("mit")
    assert names[:3] == ["clapping", "praying", "dropping"]
    assert names[-1] == "typing"


def test_class_names_by_model_name_and_entry():
    assert zoo.class_names("mtv-b-k600") == zoo.class_names("kinetics600")
    assert zoo.class_names(zoo.get_entry("mtv-l-k700")) == zoo.class_names("Kinetics-700")
    with pytest.raises(ZooError, match="unknown dataset or model 'kinetics-4000'"):
        zoo.class_names("kinetics-4000")


def test_epic_class_names_come_from_the_users_csvs(epic_dir, monkeypatch):
    heads = zoo.class_names("mtv-b-ek-k400", epic_dir=epic_dir)
    assert list(heads) == ["noun", "verb"]
    assert len(heads["noun"]) == 300 and len(heads["verb"]) == 97
    assert heads["verb"][:2] == ["take", "put"] and heads["noun"][:2] == ["tap", "spoon"]
    monkeypatch.setenv("MTV_EPIC_DIR", str(epic_dir))
    assert zoo.class_names("epic_kitchens_100") == heads


def test_epic_class_names_need_a_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MTV_EPIC_DIR", raising=False)
    with pytest.raises(ZooError, match=r"not shipped.*MTV_EPIC_DIR"):
        zoo.class_names("mtv-b-ek-k700")
    with pytest.raises(ZooError, match="EPIC_100_noun_classes.csv"):
        zoo.class_names("epic", epic_dir=tmp_path)


def test_epic_csv_with_missing_ids_is_rejected(tmp_path, epic_dir):
    shutil.copy(epic_dir / "EPIC_100_noun_classes.csv", tmp_path)
    rows = (epic_dir / "EPIC_100_verb_classes.csv").read_text().splitlines()
    (tmp_path / "EPIC_100_verb_classes.csv").write_text("\n".join(rows[:-1]) + "\n")  # drop id 96
    with pytest.raises(ZooError, match=r"EPIC_100_verb_classes.csv: expected ids 0..96 \(97 classes\)"):
        zoo.class_names("epic", epic_dir=tmp_path)


# ------------------------------------------------------------------------------------ README table


def test_committed_readme_is_up_to_date():
    committed = (REPO / "zoo" / "README.md").read_text()
    assert committed == zoo.render_readme(), "zoo/README.md is stale: run `python -m mtv.io.registry --write-table`"


def test_table_has_one_row_per_entry():
    rows = zoo.render_table().strip().splitlines()
    assert len(rows) == 2 + len(PUBLISHED) + len(EMBEDDED)
    columns = rows[0].count("|")
    assert rows[-1].startswith("| `camera-motion` |") and rows[-1].count("|") == columns
    rows = rows[:-1]
    for row, name in zip(rows[2:], PUBLISHED, strict=True):
        assert row.startswith(f"| `{name}` |") and row.count("|") == columns
        assert SCENIC_BUCKET + PUBLISHED[name][0] in row
    assert "46.7 (action)" in rows[-2] and "48.0 (action)" in rows[-1]


def test_write_table_and_check(tmp_path, monkeypatch):
    target = zoo.write_table(tmp_path / "README.md")
    assert target.read_text() == zoo.render_readme()
    shutil.copy(zoo.registry_path(), tmp_path / "models.json")
    monkeypatch.setattr(zoo, "registry_path", lambda: tmp_path / "models.json")
    assert zoo.main(["--check"]) == 0
    target.write_text("stale\n")
    assert zoo.main(["--check"]) == 1
    assert zoo.main(["--write-table"]) == 0
    assert zoo.main(["--check"]) == 0


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_list(capsys):
    assert run(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in PUBLISHED:
        assert name in out
    assert run(["zoo", "list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == list(PUBLISHED) + EMBEDDED


def test_cli_info(capsys):
    assert run(["zoo", "info", "mtv-b-k700"]) == 0
    out = capsys.readouterr().out
    assert "73.5" in out and SCENIC_BUCKET + "mtv_b_k700" in out
    assert run(["zoo", "info", "mtv-b-k700", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "k700_mtv_b2_cva"


def test_cli_errors(capsys):
    assert run(["zoo", "info", "mtv-l-k60"]) == 1
    assert "did you mean 'mtv-l-k600'" in capsys.readouterr().err.lower()
    assert run(["zoo", "destroy"]) == 2
    assert "unknown subcommand 'destroy'" in capsys.readouterr().err
    assert run(["zoo", "info"]) == 2
    assert run(["zoo", "list", "--from_file", "x"]) == 2


def test_cli_fetch_calls_fetch_preset(capsys, monkeypatch, tmp_path):
    import mtv.io.loading

    calls = []

    def fake_fetch_preset(name, *, from_file=None, progress=True):
        calls.append((name, from_file))
        return tmp_path / name

    monkeypatch.setattr(mtv.io.loading, "fetch_preset", fake_fetch_preset)
    assert run(["zoo", "fetch", "mtv_l_mit", "--from_file", "/data/checkpoint_1"]) == 0
    assert calls == [("mtv-l-mit", "/data/checkpoint_1")]
    assert capsys.readouterr().out.strip() == str(tmp_path / "mtv-l-mit")
    assert run(["zoo", "fetch", "mtv-b-k400"]) == 0
    assert calls[-1] == ("mtv-b-k400", None)
    assert run(["zoo", "fetch", "nope"]) == 1
