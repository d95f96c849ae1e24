"""SavedModel export (MTV and M&M) with named signatures and a TPU alias, TF-Hub tarballs, loading them back."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import keras
import tensorflow as tf

from mtv.data.preprocessor import VideoPreprocessor
from mtv.errors import ExportError
from mtv.utils.fileio import atomic_dir, atomic_path, writing

FLOAT_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"
# The function alias TF Model Garden's exporters give the function a TPU inference converter should place on TPU.
TPU_ALIAS = "tpu_candidate"


def _heads(model, logits) -> dict:
    """Flat output dict: logits and probabilities, per head for a multi-head model."""
    if isinstance(logits, dict):
        out = {}
        for name, value in logits.items():
            value = tf.cast(value, tf.float32)
            out[f"{name}_logits"] = value
            out[f"{name}_probabilities"] = tf.nn.softmax(value, axis=-1)
        return out
    logits = tf.cast(logits, tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def _with_policy(model, dtype: str | None):
    """The same model computing in `dtype` ('bfloat16' -> mixed_bfloat16), weights copied."""
    if dtype in (None, "float32"):
        return model
    if dtype != "bfloat16":
        raise ExportError(f"export dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        clone = type(model).from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def _float_specs(model) -> tuple[list[str], list[tf.TensorSpec]]:
    """serving_default's inputs: `frames` for an RGB model, else one named input per modality (dynamic batch)."""
    shapes = model.input_shapes
    if list(shapes) == ["rgb"]:
        return ["rgb"], [tf.TensorSpec([None, *shapes["rgb"]], tf.float32, name="frames")]
    return list(shapes), [tf.TensorSpec([None, *shapes[n]], tf.float32, name=n) for n in shapes]


def _raw_inputs(model, min_resize: int | None) -> list[tuple[tf.TensorSpec, object]]:
    """serving_uint8's inputs, each with the graph function that turns it into the model's float input."""
    shapes = model.input_shapes
    if list(shapes) == ["rgb"]:
        pre = VideoPreprocessor.from_model(model, min_resize=min_resize)
        frames, _, _, channels = shapes["rgb"]
        return [(tf.TensorSpec([None, frames, None, None, channels], tf.uint8, name="frames"), pre)]
    # One resize for both video streams: the preset's min_resize, read against the first video input.
    video = VideoPreprocessor.from_model(model, min_resize=min_resize) if {"rgb", "flow"} & set(shapes) else None
    out = []
    if "rgb" in shapes:
        frames, _, _, channels = shapes["rgb"]
        out.append((tf.TensorSpec([None, frames, None, None, channels], tf.uint8, name="rgb"), video))
    if "flow" in shapes:
        frames, size, _, channels = shapes["flow"]
        flow_pre = VideoPreprocessor(crop_size=int(size), min_resize=video.min_resize)

        def flow(q):  # uint8, 128 = no motion: mtv.data.flow.dequantize, then the evaluation crop
            return flow_pre((tf.cast(q, tf.float32) - 128.0) / 128.0, is_flow=True)

        out.append((tf.TensorSpec([None, frames, None, None, channels], tf.uint8, name="flow"), flow))
    if "audio" in shapes:
        from mtv.data.audio import log_mel_spectrogram, num_samples_for
        from mtv.eval.multimodal_inputs import audio_settings

        audio_config, audio_frames = audio_settings(model)
        length = num_samples_for(audio_frames, audio_config)

        def audio(waveform):  # cut or zero-pad to the window, as mtv.data.audio.clip_waveform
            waveform = waveform[:, :length]
            waveform = tf.pad(waveform, [[0, 0], [0, length - tf.shape(waveform)[1]]])
            waveform.set_shape([None, length])
            return log_mel_spectrogram(waveform, audio_config)[..., None]

        out.append((tf.TensorSpec([None, None], tf.float32, name="audio_waveform"), audio))
    return out


def signature_inputs(model, uint8_signature: bool = True) -> dict[str, list[str]]:
    """Signature name -> its input names, as `export` writes them for `model`."""
    out = {FLOAT_SIGNATURE: [spec.name for spec in _float_specs(model)[1]]}
    if uint8_signature:
        shapes = model.input_shapes
        out[UINT8_SIGNATURE] = (["frames"] if list(shapes) == ["rgb"]
                                else ["audio_waveform" if n == "audio" else n for n in shapes])
    return out


def export(model, path: str | os.PathLike, *, xla: bool = False, dtype: str | None = None,
           uint8_signature: bool = True, min_resize: int | None = None,
           hub_tarball: str | os.PathLike | None = None) -> Path:
    """Writes a TF SavedModel with `serving_default` (float inputs) and `serving_uint8` (raw inputs, preprocessed).

    Both signatures take a dynamic batch and return a dict of `logits` and `probabilities` (per head for a
    multi-head model, e.g. `verb_logits`). An RGB model's `serving_default` takes `frames` in [-1, 1]; a
    multimodal (M&M) model's takes one input per modality, named `rgb`, `flow` ([-1, 1]) and `audio` (log-mel),
    the model's own input shapes.

    `serving_uint8` applies the evaluation preprocessing (`mtv.data.preprocessor`): the smaller side resized to
    `min_resize` (default: the preset metadata's, else the crop size), the central crop, scaling. It takes uint8
    `frames` (RGB model) or `rgb` and `flow` uint8 frames of any size (flow quantised as `mtv.data.flow`: 128 =
    no motion, +-bound pixels at the ends) and `audio_waveform`, mono float32 at the model's sample rate from
    the clip's first frame on (cut or zero-padded to the spectrogram window, then log-mel in the graph).

    `serving_default` is also saved under the function alias `tpu_candidate` (`TPU_ALIAS`) for TPU inference
    converters. `xla` compiles it with XLA (serving_uint8 calls it after its dynamic-size preprocessing);
    `dtype='bfloat16'` computes in mixed bfloat16. The directory is written atomically; `hub_tarball` also
    writes a TF-Hub compressed tarball of it.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise ExportError(f"export path '{path}' exists and is not empty; choose a new directory")
    serving = _with_policy(model, dtype)
    names, specs = _float_specs(serving)
    # The metadata lives on the original model; the bfloat16 clone is rebuilt from its config only.
    raw = _raw_inputs(model, min_resize) if uint8_signature else None

    def float_fn(*inputs):
        x = inputs[0] if len(names) == 1 and specs[0].name == "frames" else dict(zip(names, inputs, strict=True))
        return _heads(serving, serving(x, training=False))

    # Keras' ExportArchive drops add_endpoint's jit_compile on TensorFlow: compile the tf.function ourselves.
    core = tf.function(float_fn, input_signature=specs, jit_compile=xla, autograph=False)
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(FLOAT_SIGNATURE, core)
    if raw is not None:
        def uint8_fn(*inputs):
            return core(*[prepare(x) for (_, prepare), x in zip(raw, inputs, strict=True)])

        archive.add_endpoint(UINT8_SIGNATURE, tf.function(
            uint8_fn, input_signature=[spec for spec, _ in raw], autograph=False))
    options = tf.saved_model.SaveOptions(function_aliases={TPU_ALIAS: core})
    with writing(path), atomic_dir(path) as tmp:
        archive.write_out(str(tmp), options=options, verbose=False)
    if hub_tarball is not None:
        make_hub_tarball(path, hub_tarball)
    return path


def function_aliases(saved_model_dir: str | os.PathLike) -> dict[str, str]:
    """The SavedModel's function aliases (concrete function name -> alias), from its saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(saved_model_dir) / "saved_model.pb"
    if not pb.is_file():
        raise ExportError(f"'{saved_model_dir}' is not a SavedModel directory (no saved_model.pb)")
    proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    return {name: alias for graph in proto.meta_graphs for name, alias in graph.meta_info_def.function_aliases.items()}


def make_hub_tarball(saved_model_dir: str | os.PathLike, tarball: str | os.PathLike) -> Path:
    """A TF-Hub compressed module: a .tar.gz with saved_model.pb at its root, written atomically."""
    src, tarball = Path(saved_model_dir), Path(tarball)
    if not (src / "saved_model.pb").exists():
        raise ExportError(f"'{src}' is not a SavedModel directory (no saved_model.pb)")
    with writing(tarball), atomic_path(tarball) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for item in sorted(src.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(src)), recursive=False)
    return tarball


def load_serving(handle: str | os.PathLike):
    """Loads an exported SavedModel (local dir, hub tarball URL or hub handle) with tensorflow_hub."""
    import tensorflow_hub as hub

    return hub.load(os.fspath(handle))
