"""M&M end to end: SavedModel export (named streams, uint8 signature, tpu_candidate alias) with a hub round trip,
and `mtv predict` building the record reader's inputs from a video's frames, flow and audio track."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

import mtv
from mtv.cli import run
from mtv.data.audio import AudioConfig, clip_waveform, log_mel_spectrogram
from mtv.data.config import data_config
from mtv.data.flow import compute_flow, dequantize
from mtv.data.preprocessor import VideoPreprocessor
from mtv.data.sampling import eval_clip_indices
from mtv.data.video import Video, load_video
from mtv.errors import ConfigError, DataError
from mtv.eval.evaluate import eval_dataset_configs
from mtv.eval.multimodal_inputs import audio_settings, flow_views, multimodal_views
from mtv.eval.prediction import eval_inputs
from mtv.io.hub import TPU_ALIAS, function_aliases, load_serving
from mtv.models.builder import build_model
from mtv.models.missing import missing_input

NOUNS = ["pan", "knife", "egg", "tap", "cup"]
VERBS = ["take", "cut", "wash"]
MIN_RESIZE = 48  # frames decoded at 48 px give Farnebäck some motion to find; the model sees 16 x 16 crops
META = {"class_names": {"noun": NOUNS, "verb": VERBS}, "stride": 2, "test_views": "2x1",
        "preprocessing": {"min_resize": MIN_RESIZE, "crop_size": 16, "zero_centering": True}}


def _view(hidden, heads, patch):
    return {"hidden_size": hidden, "num_heads": heads, "mlp_dim": 2 * hidden, "num_layers": 1,
            "patches": {"size": list(patch)}}


def tiny_mm_config() -> dict:
    """RGB 8 x 16 x 16, flow 4 frames (spread over the RGB clip, as the reader does), audio 32 x 16 log-mel."""
    fusion = {"type": "cross_view_attention", "fusion_layers": [0], "fuse_in_descending_order": True,
              "use_query_config": True}
    model = {"classifier": "token", "dropout_rate": 0.0, "attention_dropout_rate": 0.0, "stochastic_depth": 0.0,
             "cross_view_fusion": fusion, "view_configs": [_view(16, 2, (8, 8, 4))],
             "global_encoder_config": {"num_heads": 2, "mlp_dim": 32, "num_layers": 1, "hidden_size": 16,
                                       "merge_axis": "channel"},
             "modalities": {"rgb": {}, "flow": {"view_configs": [_view(16, 2, (8, 8, 2))], "channels": 2},
                            "audio": {"view_configs": [_view(16, 2, (8, 8))], "mel_bins": 16, "num_frames": 32}}}
    return {"model": model, "dataset_configs": {"num_frames": 8, "crop_size": 16, "flow": {"num_frames": 4},
                                                "class_splits": [5, 3], "split_names": ["noun", "verb"]}}


@pytest.fixture(scope="module")
def model():
    m = build_model(tiny_mm_config(), seed=0)
    rng = np.random.default_rng(1)  # non-zero everywhere: Scenic zero-initialises the head
    for key, var in sorted(m.flax_params().items()):
        var.assign((rng.normal(0.0, 0.2, var.shape) + key.endswith("/scale")).astype("float32"))
    m.metadata = META
    return m


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    path = mtv.export(model, tmp_path_factory.mktemp("mm_export") / "saved")
    return path, load_serving(path)  # tensorflow_hub.load


def _inputs(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.uniform(-1, 1, (batch, *shape)).astype("float32") for m, shape in model.input_shapes.items()}


def _logits(out, suffix=""):
    return np.concatenate([np.asarray(out[f"noun{suffix}"]), np.asarray(out[f"verb{suffix}"])], axis=-1)


# ------------------------------------------------------------------------------------------------ export


def test_serving_default_takes_named_streams_and_matches_keras(model, served):
    _, loaded = served
    fn = loaded.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    assert set(specs) == {"rgb", "flow", "audio"}
    for name, spec in specs.items():
        assert spec.shape.as_list() == [None, *model.input_shapes[name]] and spec.dtype == tf.float32
    assert set(fn.structured_outputs) == {"noun_logits", "noun_probabilities", "verb_logits", "verb_probabilities"}
    for batch in (3, 1):  # a dynamic batch
        x = _inputs(model, batch, seed=batch)
        out = fn(**{k: tf.constant(v) for k, v in x.items()})
        want = model(x)
        np.testing.assert_allclose(_logits(out, "_logits"), _logits(want), atol=1e-5)
        np.testing.assert_allclose(out["verb_probabilities"].numpy(), tf.nn.softmax(want["verb"]).numpy(), atol=1e-5)


def test_uint8_signature_preprocesses_every_stream(model, served):
    _, loaded = served
    fn = loaded.signatures["serving_uint8"]
    assert set(fn.structured_input_signature[1]) == {"rgb", "flow", "audio_waveform"}
    rng = np.random.default_rng(2)
    # 36x50 frames: the DMVR size rule (50 * 48 // 36 = 66) differs from rounding (67), so any drift shows.
    rgb = rng.integers(0, 256, (2, 8, 36, 50, 3), dtype=np.uint8)
    flow = rng.integers(96, 160, (2, 4, 36, 50, 2), dtype=np.uint8)
    audio_config, audio_frames = audio_settings(model)
    pre = VideoPreprocessor(crop_size=16, min_resize=MIN_RESIZE)
    for samples in (1000, 9000):  # shorter than the 32-frame window (zero-padded) and longer (cut)
        waveform = rng.uniform(-0.5, 0.5, (2, samples)).astype("float32")
        got = fn(rgb=tf.constant(rgb), flow=tf.constant(flow), audio_waveform=tf.constant(waveform))
        # What the record reader feeds for a clip starting at frame 0: clip_waveform pads or cuts the same way.
        segments = np.stack([clip_waveform(w, audio_config.sample_rate, 25.0, np.arange(8), audio_config,
                                           audio_frames) for w in waveform])
        want = model({"rgb": pre(rgb), "flow": pre(dequantize(flow), is_flow=True),
                      "audio": np.asarray(log_mel_spectrogram(segments, audio_config))[..., None]})
        np.testing.assert_allclose(_logits(got, "_logits"), _logits(want), atol=1e-4)


def test_tpu_candidate_alias_names_the_serving_default_function(served):
    from tensorflow.core.protobuf import saved_model_pb2

    path, _ = served
    aliases = function_aliases(path)
    assert aliases and set(aliases.values()) == {TPU_ALIAS}
    # serving_default's wrapper calls the model function: that function is the aliased one.
    graph = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0]
    output = graph.signature_def["serving_default"].outputs["verb_logits"].name.split(":")[0]
    wrapper = next(n for n in graph.graph_def.node if n.name == output).attr["f"].func.name
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    called = {n.attr["f"].func.name for n in library[wrapper].node_def if "f" in n.attr}
    assert called & set(aliases), (called, aliases)


# ----------------------------------------------------------------------------------------------- predict


def _record_inputs(model, source, tmp_path, **prepare_flags) -> dict:
    """The record reader's evaluation inputs for one video or frames dir, prepared at the model's resolution."""
    from mtv.data.prepare import prepare
    from mtv.data.tfrecord import make_dataset

    tmp_path.mkdir()
    csv = tmp_path / "videos.csv"
    csv.write_text(f"path,label\n{source},0\n")
    shards = prepare(csv, tmp_path / "records", min_resize=MIN_RESIZE, progress=False, **prepare_flags).shards
    shapes = model.input_shapes
    dc = {**eval_dataset_configs(model=model), "flow": {"num_frames": shapes["flow"][0]},
          "audio": {"num_frames": shapes["audio"][0], "num_mel_bins": shapes["audio"][1]}}
    streams = ("rgb", "flow" if prepare_flags.get("with_flow") else "audio")
    batch = next(iter(make_dataset(shards, dataset_configs=dc, is_train=False, batch_size=1, label_names=(),
                                   modalities=streams)))
    return {k: v.numpy()[0] for k, v in batch.items()}, shards


def test_predict_inputs_are_the_record_readers(model, videos_dir, tmp_path):
    from mtv.data.tfrecord import parse_example, resolve_files

    # Frames and flow: real frames stored losslessly at the model's resolution, so prepare's resize and ours
    # are both no-ops and the only difference left is the records' JPEG coding, measured below.
    pancake = videos_dir / "flipping_pancake__decord.mkv"
    frames = load_video(pancake, frame_transform=VideoPreprocessor(16, MIN_RESIZE).resize,
                                       max_frames=40, with_audio=False).frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    records, shards = _record_inputs(model, folder, tmp_path / "v", with_flow=True)
    got = eval_inputs(folder, model, missing_modality="zeros")  # a frames dir has no audio track
    stored = parse_example(next(iter(tf.data.TFRecordDataset(resolve_files(shards)))).numpy())
    rgb_codec = np.abs(stored.frames.astype(int) - frames.astype(int)).max() * 2 / 255
    flow_codec = np.abs(stored.flow.astype(int) - compute_flow(frames, as_uint8=True).astype(int)).max() / 128
    assert np.abs(got.inputs["rgb"] - records["rgb"]).max() <= rgb_codec + 1e-6
    assert np.abs(got.inputs["flow"] - records["flow"]).max() <= flow_codec + 1e-6
    shifted = flow_views(frames, eval_clip_indices(40, 8, 2, 2) + 1, got.config, flow_frames=4, bound=20.0)
    assert np.abs(shifted - records["flow"]).max() > flow_codec  # one frame off would show
    assert got.notes and "no audio track" in got.notes[0]
    np.testing.assert_array_equal(got.inputs["audio"], missing_input((2, *model.input_shapes["audio"])))

    # Audio: the same decoded track, window and log-mel, so equal up to float rounding.
    makeup = videos_dir / "eye_makeup_audio__mmaction2_test.avi"
    records, _ = _record_inputs(model, makeup, tmp_path / "a", with_audio=True)
    got = eval_inputs(makeup, model)
    assert got.notes == []
    np.testing.assert_allclose(got.inputs["audio"], records["audio"], atol=1e-4)


def test_missing_or_short_audio_and_one_frame(model):
    config = data_config(eval_dataset_configs(model=model))
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (24, MIN_RESIZE, 64, 3), dtype=np.uint8)
    rate, fps = 16000, 50.0
    full = Video(frames, fps, rng.uniform(-0.3, 0.3, int(24 / fps * rate)).astype("float32"), rate, "clip.mp4")
    inputs, notes = multimodal_views(full, model, config)
    # The last clip starts at frame 8 (0.16 s): its 32-frame window (0.335 s) runs past the 0.48 s video.
    assert len(notes) == 1 and "1 of 2 clip windows" in notes[0] and "zero-padded" in notes[0]
    audio_config, audio_frames = audio_settings(model)
    last = clip_waveform(full.audio, rate, fps, np.arange(8, 24, 2), audio_config, audio_frames)
    np.testing.assert_allclose(inputs["audio"][1, ..., 0], log_mel_spectrogram(last, audio_config), atol=1e-5)

    short = Video(frames, fps, full.audio, rate, "short.mp4", audio_span=(0.0, 0.2))  # 0.28 s without sound
    with pytest.raises(DataError, match=r"short\.mp4.*audio track covers.*needs its 'audio' input.*zeros"):
        multimodal_views(short, model, config)
    inputs, notes = multimodal_views(short, model, config, missing_modality="zeros")
    assert np.all(inputs["audio"] == 0) and "fed the missing-modality input" in notes[0]

    one = Video(frames[:1], fps, full.audio[:640], rate, "one.mp4")
    with pytest.raises(DataError, match=r"one\.mp4' has a single frame.*'flow'"):
        multimodal_views(one, model, config)
    with pytest.raises(ConfigError, match="missing_modality"):
        multimodal_views(full, model, config, missing_modality="drop")


def test_audio_settings_come_from_the_preset(model):
    saved = model.metadata
    try:
        model.metadata = {"config": {"dataset_configs": {"audio": {"num_frames": 32, "sample_rate": 8000}}}}
        assert audio_settings(model) == (AudioConfig(sample_rate=8000, num_mel_bins=16), 32)
        model.metadata = {"preprocessing": {"audio": {"num_mel_bins": 64}}}
        with pytest.raises(ConfigError, match=r"metadata\.preprocessing\.audio\.num_mel_bins is 64.*needs 16"):
            audio_settings(model)
    finally:
        model.metadata = saved


def test_cli_predict_with_an_mm_preset(model, videos_dir, tmp_path, capsys):
    preset = mtv.save_preset(model, tmp_path / "tiny_mm", metadata=META)
    makeup = str(videos_dir / "eye_makeup_audio__mmaction2_test.avi")
    assert run(["predict", makeup, "--model", str(preset), "--views", "1x1", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "inputs rgb+flow+audio" in out and "[noun]" in out and "[verb]" in out and "note:" not in out
    labels = [line.split(": ")[0] for line in out.splitlines()[1:] if ": " in line]
    assert len(labels) == 4 and set(labels[:2]) <= set(NOUNS) and set(labels[2:]) <= set(VERBS)

    silent = str(videos_dir / "arm_wrestling__mmaction2_demo.mp4")  # no audio track
    assert run(["predict", silent, "--model", str(preset), "--views", "1x1"]) == 1
    err = capsys.readouterr().err
    assert "arm_wrestling__mmaction2_demo.mp4' has no audio track" in err and "--missing_modality=zeros" in err
    assert run(["predict", silent, "--model", str(preset), "--views", "1x1", "--missing_modality", "zeros",
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"] == ["rgb", "flow", "audio"] and "no audio track" in result["notes"][0]
    assert [r["label"] in VERBS for r in result["heads"]["verb"]] == [True] * 3
