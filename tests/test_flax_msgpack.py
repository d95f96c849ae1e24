"""Flax legacy msgpack checkpoints: hand-built Flax bytes decode, our files round-trip, errors are clear."""

import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import msgpack
import numpy as np
import pytest

from mtv.errors import CheckpointError
from mtv.io import flax_msgpack as fm

# ------------------------------------------------------------------------------ Flax's wire format by hand
# Built with msgpack directly from the format description (ext 1 = ndarray [shape, dtype name, C bytes],
# ext 2 = complex [re, im], ext 3 = numpy scalar), independent of the writer under test.


def ext_array(arr, code=1):
    arr = np.asarray(arr)
    return msgpack.ExtType(code, msgpack.packb([list(arr.shape), arr.dtype.name, arr.tobytes()]))


def flax_2022_bytes():
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    state = {
        "global_step": 7,
        "optimizer": {
            "target": {"dense": {"kernel": ext_array(kernel), "bias": ext_array(np.zeros(4, np.float32))}},
            "state": {"step": ext_array(np.int32(7)),
                      "param_states": {"dense": {"kernel": {"momentum": ext_array(kernel * 2)},
                                                 "bias": {"momentum": ext_array(np.ones(4, np.float32))}}}},
        },
        "model_state": {},
        "rng": ext_array(np.array([0, 42], np.uint32)),
        "accum_train_time": 12.5,
        "scalar": ext_array(np.float16(1.5), code=3),
        "complex": msgpack.ExtType(2, msgpack.packb([1.0, -2.0])),
    }
    return msgpack.packb(state), kernel


def test_hand_built_flax_bytes_decode(tmp_path):
    data, kernel = flax_2022_bytes()
    path = tmp_path / "checkpoint_7"
    path.write_bytes(data)
    state = fm.read_state(path)
    assert state["global_step"] == 7 and state["accum_train_time"] == 12.5
    np.testing.assert_array_equal(state["optimizer"]["target"]["dense"]["kernel"], kernel)
    assert state["optimizer"]["target"]["dense"]["kernel"].dtype == np.float32
    step = state["optimizer"]["state"]["step"]
    assert isinstance(step, np.ndarray) and step.shape == () and step.dtype == np.int32 and step == 7
    np.testing.assert_array_equal(state["rng"], [0, 42])
    assert isinstance(state["scalar"], np.float16) and state["scalar"] == 1.5
    assert state["complex"] == complex(1, -2)
    params = fm.extract_params(state)
    assert set(params) == {"dense"} and set(params["dense"]) == {"kernel", "bias"}


def test_hand_built_bfloat16_record():
    values = np.array([1.0, -2.5, 3.0], dtype=ml_dtypes.bfloat16)
    state = fm.restore_bytes(msgpack.packb({"w": ext_array(values)}))
    assert state["w"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(state["w"].astype(np.float32), [1.0, -2.5, 3.0])


def test_bfloat16_without_ml_dtypes_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.msgpack"
    path.write_bytes(msgpack.packb({"w": ext_array(np.ones(2, ml_dtypes.bfloat16))}))
    # A fresh interpreter where `import ml_dtypes` fails (once imported, numpy knows 'bfloat16').
    script = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "from mtv.io import flax_msgpack as fm\n"
        "from mtv.errors import CheckpointError\n"
        "try:\n    fm.read_state(sys.argv[1])\n"
        "except CheckpointError as err:\n    print(err)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    assert "ml_dtypes" in result.stdout and "'w'" in result.stdout and "ckpt.msgpack" in result.stdout


def test_writer_bytes_equal_hand_packed_flax_bytes(tmp_path):
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    tree = {"a": a, "s": np.float32(0.5), "n": 3, "f": 0.25, "t": "x", "z": None, "c": 2 + 3j, "e": {}}
    complex_record = msgpack.ExtType(2, msgpack.packb([2.0, 3.0]))
    expected = msgpack.packb({"a": ext_array(a), "s": ext_array(np.float32(0.5), code=3), "n": 3, "f": 0.25,
                              "t": "x", "z": None, "c": complex_record, "e": {}})
    fm.write_state(tmp_path / "f", tree)
    assert (tmp_path / "f").read_bytes() == expected


# ------------------------------------------------------------------------------ round trips


def nested_tree():
    rng = np.random.default_rng(0)
    return {
        "encoder": {
            "block_0": {"kernel": rng.standard_normal((3, 4, 5)).astype(np.float32),
                        "bias": rng.standard_normal(5).astype(np.float16)},
            "ids": rng.integers(-50, 50, (7,), dtype=np.int32),
            "bf": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        },
        "strided": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],  # not C-contiguous
        "big_endian": np.arange(4, dtype=">i4"),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "np_scalar": np.float32(1.25),
        "py": {"int": -3, "float": 2.5, "bool": True, "str": "hi", "none": None},
    }


def assert_trees_equal(expected, actual):
    assert set(expected) == set(actual)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_trees_equal(value, actual[key])
        elif isinstance(value, np.ndarray):
            assert actual[key].dtype == value.dtype.newbyteorder("=") and actual[key].shape == value.shape
            np.testing.assert_array_equal(actual[key], value)
        else:
            assert type(actual[key]) is type(value) and actual[key] == value


def test_round_trip_nested_tree(tmp_path):
    tree = nested_tree()
    fm.write_state(tmp_path / "state.msgpack", tree)
    assert_trees_equal(tree, fm.read_state(tmp_path / "state.msgpack"))


def test_lists_and_tuples_are_stored_as_index_maps(tmp_path):
    fm.write_state(tmp_path / "s", {"l": [np.ones(2), 5], "t": (1, (2, 3))})
    state = fm.read_state(tmp_path / "s")
    assert set(state["l"]) == {"0", "1"} and state["l"]["1"] == 5
    assert state["t"] == {"0": 1, "1": {"0": 2, "1": 3}}


@pytest.mark.parametrize("layout, top_keys", [
    ("optax", {"params", "opt_state", "global_step", "model_state", "rng", "metadata"}),
    ("flax_optim", {"global_step", "optimizer", "model_state", "rng", "accum_train_time"}),
])
def test_write_checkpoint_layouts(tmp_path, layout, top_keys):
    params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    path = fm.write_checkpoint(tmp_path, params, step=5, layout=layout)
    assert path == tmp_path / "checkpoint_5"
    state = fm.read_state(path)
    assert set(state) == top_keys
    assert state["global_step"] == 5
    if layout == "flax_optim":
        assert set(state["optimizer"]) == {"target", "state"}
        assert set(state["optimizer"]["state"]) == {"step", "param_states"}
        assert state["optimizer"]["state"]["step"] == 5
    assert_trees_equal(params, fm.extract_params(state))


def test_write_checkpoint_to_file_path_and_bad_layout(tmp_path):
    path = fm.write_checkpoint(tmp_path / "sub" / "my_ckpt", {"w": np.ones(1)}, layout="optax")
    assert path == tmp_path / "sub" / "my_ckpt" and path.is_file()
    with pytest.raises(CheckpointError, match="flax_optim"):
        fm.write_checkpoint(tmp_path, {"w": np.ones(1)}, layout="orbax")


def test_directory_picks_newest_step_numerically(tmp_path):
    for step in (9, 10, 2):
        fm.write_checkpoint(tmp_path, {"w": np.full(2, step, np.float32)}, step=step)
    (tmp_path / "checkpoint_tmp").write_bytes(b"half-written")
    (tmp_path / ".checkpoint_11.abc.tmp").write_bytes(b"half-written")
    (tmp_path / "checkpoint_10_gda").mkdir()
    assert fm.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_10"
    state = fm.read_state(tmp_path)
    assert state["global_step"] == 10
    np.testing.assert_array_equal(fm.extract_params(state)["w"], [10, 10])


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "checkpoint_1"
    fm.write_state(target, {"w": np.ones(3)})
    before = target.read_bytes()
    with pytest.raises(CheckpointError, match="w/bad.*object"):
        fm.write_state(target, {"w": {"ok": np.zeros(2), "bad": object()}})
    with pytest.raises(CheckpointError, match="'x'.*object"):
        fm.write_state(target, {"x": np.array([object()])})  # fails while streaming, after the header
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1"]


# ------------------------------------------------------------------------------ chunked arrays


def test_chunked_arrays_round_trip_and_match_flax_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "MAX_CHUNK_SIZE", 64)  # 16 float32 values per chunk
    big = np.arange(100, dtype=np.float32).reshape(4, 25)
    small = np.arange(16, dtype=np.float32)  # exactly 64 bytes: not chunked
    fm.write_state(tmp_path / "c", {"layer": {"big": big, "small": small}})
    raw = msgpack.unpackb((tmp_path / "c").read_bytes(), ext_hook=lambda code, data: (code, data))
    record = raw["layer"]["big"]
    assert record["__msgpack_chunked_array__"] is True
    assert record["shape"] == {"0": 4, "1": 25}
    assert list(record["chunks"]) == [str(i) for i in range(math.ceil(100 / 16))]
    assert isinstance(raw["layer"]["small"], tuple)  # a plain ext record
    state = fm.read_state(tmp_path / "c")
    np.testing.assert_array_equal(state["layer"]["big"], big)
    np.testing.assert_array_equal(state["layer"]["small"], small)


def test_hand_built_chunked_record_decodes():
    record = {"__msgpack_chunked_array__": True, "shape": {"0": 3, "1": 4},
              "chunks": {"0": ext_array(np.arange(5.0)), "1": ext_array(np.arange(5.0, 12.0))}}
    state = fm.restore_bytes(msgpack.packb({"emb": record, "top": {"x": 1}}))
    np.testing.assert_array_equal(state["emb"], np.arange(12.0).reshape(3, 4))
    whole = fm.restore_bytes(msgpack.packb(record))  # a chunked array as the whole file
    assert whole.shape == (3, 4)


def test_chunked_record_with_wrong_size_is_an_error():
    record = {"__msgpack_chunked_array__": True, "shape": {"0": 3, "1": 4},
              "chunks": {"0": ext_array(np.arange(5.0))}}
    with pytest.raises(CheckpointError, match=r"emb.*5 values.*\(3, 4\)"):
        fm.restore_bytes(msgpack.packb({"emb": record}), "f")


# ------------------------------------------------------------------------------ errors


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope.*not found"):
        fm.read_state(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "checkpoint_tmp").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        fm.read_state(tmp_path)
    assert "checkpoint_<step>" in str(err.value) and "notes.txt" in str(err.value)


def test_orbax_directory_is_refused(tmp_path):
    (tmp_path / "checkpoint_3").mkdir()
    with pytest.raises(CheckpointError, match="Orbax"):
        fm.read_state(tmp_path)


def test_truncated_file(tmp_path):
    path = fm.write_checkpoint(tmp_path, nested_tree()["encoder"], step=1, layout="flax_optim")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        fm.read_state(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(seed).bytes(256))
    with pytest.raises(CheckpointError, match="random.bin"):
        fm.read_state(path)


def test_top_level_must_be_a_map():
    with pytest.raises(CheckpointError, match="top level.*list"):
        fm.restore_bytes(msgpack.packb([1, 2]), "f")


def test_unknown_ext_type():
    with pytest.raises(CheckpointError, match=r"'a/b'.*ext type 42"):
        fm.restore_bytes(msgpack.packb({"a": {"b": msgpack.ExtType(42, b"xx")}}), "f")


def test_payload_length_must_match_shape_and_dtype():
    bad = msgpack.ExtType(1, msgpack.packb([[2, 3], "float32", b"\0" * 20]))
    with pytest.raises(CheckpointError, match=r"'w'.*\(2, 3\).*float32.*24 bytes.*20"):
        fm.restore_bytes(msgpack.packb({"w": bad}), "f")


def test_unknown_dtype_name():
    bad = msgpack.ExtType(1, msgpack.packb([[1], "float99", b"\0" * 4]))
    with pytest.raises(CheckpointError, match="float99"):
        fm.restore_bytes(msgpack.packb({"w": bad}), "f")


# ------------------------------------------------------------------------------ extract_params


PARAMS = {"dense": {"kernel": np.ones((2, 2), np.float32)}}


@pytest.mark.parametrize("state", [
    {"params": PARAMS, "opt_state": {}, "global_step": 0},
    {"optimizer": {"target": PARAMS, "state": {}}, "global_step": 0},
    {"optimizer": {"target": {"params": PARAMS}}, "global_step": 0},  # pre-Linen
    {"params": PARAMS, "batch_stats": {}},  # a Flax variables dict
    PARAMS,  # a bare tree
])
def test_extract_params_layouts(state):
    params = fm.extract_params(state)
    assert set(params) == {"dense"}
    np.testing.assert_array_equal(params["dense"]["kernel"], PARAMS["dense"]["kernel"])


def test_extract_params_keeps_a_two_key_target():
    target = {"params": PARAMS, "other": {"x": np.zeros(1)}}  # a module really named 'params'
    assert set(fm.extract_params({"optimizer": {"target": target}})) == {"params", "other"}


@pytest.mark.parametrize("state, listed", [
    ({"global_step": 3, "rng": np.zeros(2), "model_state": {}}, "'global_step'"),
    ({"optimizer": {"state": {}}, "global_step": 1}, "'state'"),
    ({"meta": {"name": "x"}}, "'meta'"),
])
def test_extract_params_errors_list_keys(state, listed):
    with pytest.raises(CheckpointError, match="no params found") as err:
        fm.extract_params(state)
    assert listed in str(err.value)


# ------------------------------------------------------------------------------ flatten / unflatten


def test_flatten_unflatten():
    tree = {"a": {"b": np.ones(1), "c": {"d": np.zeros(2)}}, "e": np.ones(3), "empty": {}}
    flat = fm.flatten(tree)
    assert list(flat) == ["a/b", "a/c/d", "e"]
    back = fm.unflatten(flat)
    assert set(back) == {"a", "e"} and back["a"]["c"]["d"] is tree["a"]["c"]["d"]
    assert set(fm.flatten(tree, sep=".")) == {"a.b", "a.c.d", "e"}


def test_flatten_and_unflatten_conflicts():
    with pytest.raises(CheckpointError, match="a/b"):
        fm.flatten({"a/b": np.ones(1)})
    with pytest.raises(CheckpointError, match="'a'"):
        fm.unflatten({"a": np.ones(1), "a/b": np.ones(1)})
    with pytest.raises(CheckpointError, match="a/b"):
        fm.unflatten({"a/b/c": np.ones(1), "a/b": np.ones(1)})


# ------------------------------------------------------------------------------ the Scenic fixture


def test_fixture_params_through_a_2022_checkpoint(tmp_path, shared_dir):
    with np.load(shared_dir / "fixtures" / "scenic_mtv" / "cva_2view" / "params.npz") as npz:
        flat = {key: npz[key] for key in npz.files}
    path = fm.write_checkpoint(tmp_path, fm.unflatten(flat), step=1000, layout="flax_optim")
    state = fm.read_state(tmp_path)
    assert set(state) == {"global_step", "optimizer", "model_state", "rng", "accum_train_time"}
    restored = fm.flatten(fm.extract_params(state))
    assert path.name == "checkpoint_1000" and set(restored) == set(flat) and len(flat) == 122
    for key, value in flat.items():
        assert restored[key].dtype == value.dtype and restored[key].shape == value.shape, key
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    assert sum(v.size for v in restored.values()) == 59789  # the fixture's documented parameter count


def test_real_flax_reads_our_file_and_we_read_flax(tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "s": np.int32(3), "n": 1.5}
    fm.write_state(tmp_path / "ours", tree)
    theirs = serialization.msgpack_restore((tmp_path / "ours").read_bytes())
    np.testing.assert_array_equal(theirs["a"]["w"], tree["a"]["w"])
    assert theirs["s"] == 3 and theirs["n"] == 1.5
    back = fm.restore_bytes(serialization.msgpack_serialize(tree))
    np.testing.assert_array_equal(back["a"]["w"], tree["a"]["w"])
