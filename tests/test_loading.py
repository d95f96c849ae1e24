"""mtv.load / fetch_preset: every handle kind, conversion once, offline reuse, concurrency, head swap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import mtv
from mtv.errors import CheckpointError, DownloadError, ZooError
from mtv.io import flax_msgpack
from mtv.io.presets import is_preset, save_preset
from tests.helpers import FIXTURE, fixture_input, fixture_logits, fixture_model, require_shared, serve_directory


def _close(model, atol=1e-5):
    out = np.asarray(model(fixture_input()))
    np.testing.assert_allclose(out, fixture_logits(), atol=atol)


@pytest.fixture(scope="module")
def model():
    return fixture_model()


def test_load_preset_dir_and_keras_file(model, tmp_path):
    save_preset(model, tmp_path / "preset", metadata={"class_names": list("abcde")})
    loaded = mtv.load(tmp_path / "preset")
    _close(loaded)
    assert loaded.metadata["class_names"] == list("abcde")
    model.save(tmp_path / "m.keras")
    _close(mtv.load(str(tmp_path / "m.keras")))


def test_load_scenic_checkpoint_dir_2022_layout(tmp_path):
    require_shared()
    params = dict(np.load(FIXTURE / "params.npz"))
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    flax_msgpack.write_checkpoint(ckpt_dir, flax_msgpack.unflatten(params), step=7, layout="flax_optim")
    with pytest.raises(ZooError, match="pass config="):
        mtv.load(ckpt_dir)
    _close(mtv.load(ckpt_dir, config=FIXTURE / "config.json"))
    shutil.copy(FIXTURE / "config.json", ckpt_dir / "config.json")
    _close(mtv.load(ckpt_dir))


def test_num_classes_replaces_head_and_says_so(model, tmp_path, caplog):
    save_preset(model, tmp_path / "preset")
    with caplog.at_level("WARNING"):
        swapped = mtv.load(tmp_path / "preset", num_classes=3)
    assert "new 3-class head" in caplog.text
    assert swapped(fixture_input()).shape == (2, 3)
    kept = swapped.flax_params()["MultiviewEncoder/posembed_input_view0/pos_embedding"].numpy()
    np.testing.assert_array_equal(kept, model.flax_params()["MultiviewEncoder/posembed_input_view0/pos_embedding"])
    # Scenic checkpoints take the same route.
    with caplog.at_level("WARNING"):
        ck = mtv.from_scenic(FIXTURE / "config.json", FIXTURE / "params.npz", num_classes=7)
    assert ck(fixture_input()).shape == (2, 7)
    assert "output_projection is re-initialised" in caplog.text


def test_load_preset_tarball_from_url(model, tmp_path):
    save_preset(model, tmp_path / "preset")
    with tarfile.open(tmp_path / "www.tar.gz", "w:gz") as tar:
        for item in sorted((tmp_path / "preset").iterdir()):
            tar.add(item, arcname=item.name)
    site = tmp_path / "site"
    site.mkdir()
    shutil.move(tmp_path / "www.tar.gz", site / "tiny-preset.tar.gz")
    with serve_directory(site) as base:
        _close(mtv.load(f"{base}/tiny-preset.tar.gz"))
    # The server is gone: the cached download is reused offline.
    _close(mtv.load(f"{base}/tiny-preset.tar.gz"))


@pytest.fixture()
def fake_zoo(tmp_path, monkeypatch):
    """A registry with one Scenic-checkpoint entry served by a local HTTP server."""
    from mtv.io import registry as zoo

    require_shared()
    real = json.loads(zoo.registry_path().read_text())
    entry = dict(next(e for e in real["models"] if e["name"] == "mtv-b-k400"))
    site = tmp_path / "site"
    site.mkdir()
    flax_msgpack.write_checkpoint(site / "tiny_ckpt", flax_msgpack.unflatten(dict(np.load(FIXTURE / "params.npz"))),
                                  layout="flax_optim")
    cfg = json.loads((FIXTURE / "config.json").read_text())["config"]
    cfg["dataset_configs"]["crop_size"] = 32
    cfg_path = tmp_path / "tiny_config.json"
    cfg_path.write_text(json.dumps(cfg))
    with serve_directory(site) as base:
        entry.update(name="tiny-test", config=str(cfg_path), config_path=str(cfg_path), num_classes=5,
                     dataset="tiny5", url=f"{base}/tiny_ckpt", sha256=None)
        registry = {**real, "models": real["models"] + [entry]}
        path = tmp_path / "models.json"
        path.write_text(json.dumps(registry))
        monkeypatch.setitem(zoo.DATASETS, "tiny5", ("Tiny five-class test set", None, 5))
        monkeypatch.setattr(zoo, "registry_path", lambda: path)
        monkeypatch.setattr(zoo, "class_names", lambda *a, **k: list("abcde"))
        yield entry, site


def test_zoo_name_downloads_converts_once_and_reuses_offline(fake_zoo, monkeypatch):
    from mtv.io import loading
    entry, site = fake_zoo
    import mtv.io.scenic

    calls = []
    real_from_scenic = mtv.io.scenic.from_scenic
    monkeypatch.setattr(mtv.io.scenic, "from_scenic",
                        lambda *a, **k: calls.append(1) or real_from_scenic(*a, **k))
    _close(mtv.load("tiny-test"))
    assert is_preset(loading.preset_cache_dir("tiny-test"))
    (site / "tiny_ckpt").unlink()  # no network copy any more
    loaded = mtv.load("tiny-test")
    _close(loaded)
    assert len(calls) == 1
    assert loaded.metadata["name"] == "tiny-test"


def test_unknown_name_and_missing_path():
    with pytest.raises(ZooError, match="Did you mean 'mtv-b-k400'"):
        mtv.load("mtv-b-k40")
    with pytest.raises(ZooError, match="does not exist"):
        mtv.load("/nonexistent/dir/model.keras")


def test_download_failure_names_url_and_leaves_no_cache(fake_zoo):
    from mtv.io import loading
    entry, site = fake_zoo
    (site / "tiny_ckpt").unlink()
    with pytest.raises(DownloadError, match="tiny_ckpt"):
        mtv.load("tiny-test")
    assert not loading.preset_cache_dir("tiny-test").exists()


def test_sha256_mismatch_removes_file(fake_zoo, monkeypatch, tmp_path):
    from mtv.io import loading
    from mtv.io import registry as zoo
    entry, site = fake_zoo
    registry = json.loads(zoo.registry_path().read_text())
    registry["models"][-1]["sha256"] = "0" * 64
    path = tmp_path / "models2.json"
    path.write_text(json.dumps(registry))
    monkeypatch.setattr(zoo, "registry_path", lambda: path)
    with pytest.raises(DownloadError, match="sha256"):
        mtv.load("tiny-test")
    assert not loading.preset_cache_dir("tiny-test").exists()


def test_fetch_from_file_and_truncated_checkpoint(fake_zoo, tmp_path):
    from mtv.io.loading import fetch_preset

    entry, site = fake_zoo
    data = (site / "tiny_ckpt").read_bytes()
    bad = tmp_path / "truncated"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        fetch_preset("tiny-test", from_file=bad)
    good = tmp_path / "good"
    good.write_bytes(data)
    _close(mtv.load(fetch_preset("tiny-test", from_file=good)))


def test_two_processes_load_the_same_model_at_once(fake_zoo, tmp_path):
    from mtv.io import loading
    from mtv.io import registry as zoo
    code = (
        "import sys, numpy as np, mtv\n"
        "from mtv.io import registry as zoo\n"
        f"zoo.registry_path = lambda: __import__('pathlib').Path({str(zoo.registry_path())!r})\n"
        "zoo.class_names = lambda *a, **k: list('abcde')\n"
        "zoo.DATASETS['tiny5'] = ('Tiny', None, 5)\n"
        "m = mtv.load('tiny-test')\n"
        f"x = np.load({str(FIXTURE / 'input.npy')!r})\n"
        f"print(float(abs(np.asarray(m(x)) - np.load({str(FIXTURE / 'logits.npy')!r})).max()))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert float(out.strip().splitlines()[-1]) < 1e-5
    cache = loading.preset_cache_dir("tiny-test")
    assert is_preset(cache)
    leftovers = [p.name for p in cache.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_a_zoo_checkpoint_that_does_not_parse_is_removed_and_not_trusted(fake_zoo):
    from mtv.io import download, loading
    entry, site = fake_zoo
    data = (site / "tiny_ckpt").read_bytes()
    (site / "tiny_ckpt").write_bytes(data[: len(data) // 2])  # served completely, but a truncated checkpoint
    with pytest.raises(CheckpointError, match="removed from the cache and nothing was trusted"):
        mtv.load("tiny-test")
    assert download.recorded_sha256(entry["url"]) is None
    assert not loading.preset_cache_dir("tiny-test").exists()
    (site / "tiny_ckpt").write_bytes(data)  # the correct file is then accepted, not rejected by a poisoned hash
    _close(mtv.load("tiny-test"))
    assert download.recorded_sha256(entry["url"]) is not None
