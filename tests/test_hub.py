"""SavedModel export: signatures, parity, uint8 preprocessing, hub tarballs over HTTP, TFSMLayer fine-tuning."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtv
from mtv.data.preprocessor import VideoPreprocessor
from mtv.data.transforms import video_to_eval_views
from mtv.errors import ExportError
from mtv.io.hub import TPU_ALIAS, function_aliases, make_hub_tarball
from tests.conftest import needs_shared
from tests.helpers import FIXTURE, fixture_input, fixture_model, serve_directory

pytestmark = needs_shared  # every test here uses the Scenic fixture from ../shared
LOGITS = np.load(FIXTURE / "logits.npy") if FIXTURE.is_dir() else None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = fixture_model()
    root = tmp_path_factory.mktemp("export")
    (root / "site").mkdir()
    path = mtv.export(model, root / "saved", hub_tarball=root / "site" / "tiny.tar.gz")
    return model, path, root


def test_signatures_match_keras_model(exported):
    model, path, _ = exported
    loaded = tf.saved_model.load(str(path))
    assert {"serving_default", "serving_uint8"} <= set(loaded.signatures)
    x = fixture_input()
    out = loaded.signatures["serving_default"](frames=tf.constant(x))
    assert set(out) == {"logits", "probabilities"}
    np.testing.assert_allclose(out["logits"].numpy(), LOGITS, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(LOGITS).numpy(), atol=1e-5)
    # dynamic batch
    one = loaded.signatures["serving_default"](frames=tf.constant(x[:1]))["logits"].numpy()
    np.testing.assert_allclose(one, LOGITS[:1], atol=1e-5)
    # The model function is recorded for TPU inference converters, as TF Model Garden's exporters do.
    assert function_aliases(path) and set(function_aliases(path).values()) == {TPU_ALIAS}
    assert not _xla_compiled(path)


def test_uint8_signature_gives_the_evaluation_centre_view(tmp_path):
    model = fixture_model()
    loaded = tf.saved_model.load(str(mtv.export(model, tmp_path / "saved", min_resize=37)))
    # 48x70 frames: the DMVR size rule (70 * 37 // 48 = 53) differs from rounding (54), so any drift shows.
    raw = np.random.default_rng(0).integers(0, 256, size=(2, 8, 48, 70, 3), dtype=np.uint8)
    got = loaded.signatures["serving_uint8"](frames=tf.constant(raw))["logits"].numpy()
    views = np.concatenate([video_to_eval_views(clip, num_frames=8, stride=1, num_clips=1, crop_size=32,
                                                min_resize=37, three_crops=False) for clip in raw])
    np.testing.assert_allclose(got, np.asarray(model(views)), atol=1e-4)


def test_uint8_signature_defaults_to_the_models_preprocessing(exported):
    model, path, _ = exported
    loaded = tf.saved_model.load(str(path))
    raw = np.random.default_rng(1).integers(0, 256, size=(1, 8, 40, 52, 3), dtype=np.uint8)
    got = loaded.signatures["serving_uint8"](frames=tf.constant(raw))["logits"].numpy()
    # No preset metadata: evaluation's fallback, the short side resized to the 32-pixel crop.
    want = np.asarray(model(VideoPreprocessor(crop_size=32, min_resize=32)(raw)))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_hub_load_local_and_over_http(exported, monkeypatch, tmp_path):
    import tensorflow_hub as hub

    _, path, root = exported
    x = tf.constant(fixture_input())
    local = hub.load(str(path))
    np.testing.assert_allclose(local.signatures["serving_default"](frames=x)["logits"].numpy(), LOGITS, atol=1e-5)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hubcache"))
    with serve_directory(root / "site") as base:
        remote = hub.load(f"{base}/tiny.tar.gz")
    np.testing.assert_allclose(remote.signatures["serving_default"](frames=x)["logits"].numpy(), LOGITS, atol=1e-5)
    assert any((tmp_path / "hubcache").iterdir()), "the hub module was not cached in TFHUB_CACHE_DIR"


def test_tarball_has_saved_model_at_root(exported):
    import tarfile

    _, _, root = exported
    with tarfile.open(root / "site" / "tiny.tar.gz") as tar:
        names = tar.getnames()
    assert "saved_model.pb" in names and "variables" in names


def test_export_refuses_non_empty_dir_and_bad_dtype(tmp_path):
    model = fixture_model()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        mtv.export(model, tmp_path / "busy")
    with pytest.raises(ExportError, match="bfloat16"):
        mtv.export(model, tmp_path / "new", dtype="float16")
    with pytest.raises(ExportError, match="saved_model.pb"):
        make_hub_tarball(tmp_path / "busy", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def _xla_compiled(path) -> bool:
    """Whether any function of the SavedModel carries `_XlaMustCompile = true` (a jit_compile=True tf.function)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    return any(f.attr["_XlaMustCompile"].b for g in proto.meta_graphs for f in g.graph_def.library.function
               if "_XlaMustCompile" in f.attr)


def test_xla_and_bfloat16_exports(tmp_path):
    model = fixture_model()
    x = tf.constant(fixture_input())
    xla_path = mtv.export(model, tmp_path / "xla", xla=True, uint8_signature=False)
    assert _xla_compiled(xla_path)  # Keras' ExportArchive alone drops jit_compile on TensorFlow
    xla = tf.saved_model.load(str(xla_path))
    np.testing.assert_allclose(xla.signatures["serving_default"](frames=x)["logits"].numpy(), LOGITS, atol=1e-4)
    bf = tf.saved_model.load(str(mtv.export(model, tmp_path / "bf16", dtype="bfloat16", uint8_signature=False)))
    got = bf.signatures["serving_default"](frames=x)["logits"].numpy()
    assert got.dtype == np.float32
    assert np.abs(got - LOGITS).max() < 0.15  # bfloat16 keeps ~3 significant digits
    assert not np.allclose(got, LOGITS, atol=1e-6)  # and really computed in bfloat16


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_tfsmlayer_fine_tuning(exported, optimizer, tmp_path):
    _, path, _ = exported
    work = tmp_path / "copy"
    shutil.copytree(path, work)
    layer = keras.layers.TFSMLayer(str(work), call_endpoint="serving_default", trainable=True)
    inputs = keras.Input((8, 32, 32, 3))
    model = keras.Model(inputs, layer(inputs)["logits"])
    opt = (keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd_momentum"
           else keras.optimizers.AdamW(1e-2, weight_decay=1e-4))
    opt.build(model.trainable_variables)  # without this, fit fails on a variable scope-name error
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = fixture_input()
    y = np.array([1, 3])
    before = [v.numpy().copy() for v in model.trainable_variables]
    assert len(before) == 122
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=4, batch_size=2, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=True))
