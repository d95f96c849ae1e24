"""TFRecords of `tf.train.SequenceExample`s in the DMVR / MediaSequence layout, and the tf.data reader.

Keys (MediaSequence names, as DMVR and Scenic's `video_tfrecord_dataset` read them):

context:
  `example/id`                      bytes  unique id of the example (a path stem, an Epic narration_id)
  `clip/media_id`                   bytes  the source video (path or Epic video_id)
  `image/frame_rate`                float  frames per second of `image/encoded`
  `clip/label/index`                int64* the label(s) named "label" (DMVR's `add_label` key)
  `clip/label/string`               bytes* their text, when known
  `clip/label/<name>/index`         int64* any other named label, e.g. `clip/label/verb/index` and
  `clip/label/<name>/string`        bytes*   `clip/label/noun/index` for Epic-Kitchens
  `WAVEFORM/feature/sample_rate`    float  sample rate of the waveform
feature lists:
  `image/encoded`                   one JPEG (RGB) per frame
  `WAVEFORM/feature/floats`         one feature holding the whole mono waveform (DMVR's `add_audio` key)
  `FORWARD_FLOW/image/encoded`      one JPEG per flow frame: R = horizontal, G = vertical motion, B = 128,
                                    uint8 with 128 = no motion (see `mtv.data.flow`); flow frame t is
                                    the motion from RGB frame t to t + 1

Shards are named `<name>-00000-of-00004.tfrecord`. `make_dataset` accepts a glob, a directory, a list
of files, or `<dir>/<name>@4` (Scenic's sharded-file notation, with our file names).

`make_dataset` decodes records on the host (protobuf + OpenCV, only the sampled JPEGs), so a
corrupt record, an undecodable JPEG, an out-of-range label or a missing flow/audio stream skips that
example with a warning and counts it in a `SkipCounter`, instead of stopping the pipeline. Records
written without a modality the model needs at all are refused up front (`check_modalities`): the
first record is read before the pipeline is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
from absl import logging

from mtv.data import audio as audio_lib
from mtv.data import flow as flow_lib
from mtv.data import transforms
from mtv.data.config import DataConfig, data_config
from mtv.data.sampling import eval_clip_indices, train_clip_indices
from mtv.errors import ConfigError, DataError
from mtv.utils.fileio import writing

try:  # deprecated, but reading a file with it costs microseconds instead of an eager dataset's ~0.1 s
    from tensorflow.python.lib.io.tf_record import tf_record_iterator as _record_iterator
    from tensorflow.python.util.deprecation import silence as _silence
except ImportError:  # pragma: no cover - newer TensorFlow
    _record_iterator = None

ID_KEY = "example/id"
MEDIA_ID_KEY = "clip/media_id"
FRAME_RATE_KEY = "image/frame_rate"
IMAGE_KEY = "image/encoded"
FLOW_KEY = "FORWARD_FLOW/image/encoded"
AUDIO_KEY = "WAVEFORM/feature/floats"
AUDIO_RATE_KEY = "WAVEFORM/feature/sample_rate"
MODALITIES = ("rgb", "flow", "audio")
MODALITY_KEYS = {"rgb": IMAGE_KEY, "flow": FLOW_KEY, "audio": AUDIO_KEY}
DEFAULT_AUDIO_FRAMES = 800  # 8 s of 10 ms log-mel frames


def label_index_key(name: str) -> str:
    """`clip/label/index` for "label", else `clip/label/<name>/index`."""
    return "clip/label/index" if name == "label" else f"clip/label/{name}/index"


def label_string_key(name: str) -> str:
    """`clip/label/string` for "label", else `clip/label/<name>/string`."""
    return "clip/label/string" if name == "label" else f"clip/label/{name}/string"


@dataclasses.dataclass
class ClipExample:
    """One example: frames, labels by name, and optional audio and flow."""

    id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    labels: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    label_strings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    fps: float = 30.0
    media_id: str = ""
    audio: np.ndarray | None = None  # float32 [samples], mono
    sample_rate: int | None = None
    flow: np.ndarray | None = None  # uint8 [T', H, W, 2], 128 = no motion


def encode_jpeg(image: np.ndarray, quality: int = 90, full_chroma: bool = False) -> bytes:
    """RGB (or greyscale) uint8 image -> JPEG bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if full_chroma:  # flow channels must not be averaged together by 4:2:0 subsampling
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise DataError(f"could not JPEG-encode an image of shape {list(image.shape)}")
    return data.tobytes()


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def serialize_example(example: ClipExample, jpeg_quality: int = 90) -> bytes:
    """A ClipExample -> serialized SequenceExample."""
    frames = np.asarray(example.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise DataError(f"example '{example.id}': frames must be uint8 [T, H, W, 3] with T >= 1, "
                        f"got {frames.dtype} {list(frames.shape)}")
    seq = tf.train.SequenceExample()
    ctx = seq.context.feature
    ctx[ID_KEY].bytes_list.value.append(example.id.encode())
    ctx[MEDIA_ID_KEY].bytes_list.value.append((example.media_id or example.id).encode())
    ctx[FRAME_RATE_KEY].float_list.value.append(float(example.fps))
    for name, values in example.labels.items():
        ctx[label_index_key(name)].int64_list.value.extend(int(v) for v in values)
    for name, values in example.label_strings.items():
        ctx[label_string_key(name)].bytes_list.value.extend(v.encode() for v in values)
    lists = seq.feature_lists.feature_list
    lists[IMAGE_KEY].feature.extend(_bytes([encode_jpeg(f, jpeg_quality)]) for f in frames)
    if example.audio is not None:
        ctx[AUDIO_RATE_KEY].float_list.value.append(float(example.sample_rate))
        lists[AUDIO_KEY].feature.add().float_list.value.extend(np.asarray(example.audio, np.float32))
    if example.flow is not None:
        flow = np.asarray(example.flow, np.uint8)
        third = np.full(flow.shape[:-1] + (1,), 128, np.uint8)
        lists[FLOW_KEY].feature.extend(
            _bytes([encode_jpeg(f, 95, full_chroma=True)]) for f in np.concatenate([flow, third], -1))
    return seq.SerializeToString()


def _decode_jpegs(encoded: Sequence[bytes], what: str, numbers: Sequence[int] | None = None) -> list[np.ndarray]:
    """Decodes JPEGs to RGB; `numbers` name them in errors (default: their positions)."""
    out = []
    for i, data in enumerate(encoded):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise DataError(f"{what} {numbers[i] if numbers is not None else i} is not a decodable JPEG")
        out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if len({im.shape for im in out}) > 1:
        raise DataError(f"{what}s have different sizes: {sorted({im.shape for im in out})}")
    return out


def _parse(record: bytes) -> tf.train.SequenceExample:
    try:
        return tf.train.SequenceExample.FromString(record)
    except Exception as e:  # protobuf raises its own DecodeError
        raise DataError(f"record is not a tf.train.SequenceExample ({e})") from e


def _frame_bytes(seq: tf.train.SequenceExample, key: str) -> list[bytes]:
    if key not in seq.feature_lists.feature_list:
        return []
    return [f.bytes_list.value[0] if f.bytes_list.value else b""
            for f in seq.feature_lists.feature_list[key].feature]


def _context(seq, key: str, kind: str) -> list:
    if key not in seq.context.feature:
        return []
    return list(getattr(seq.context.feature[key], kind).value)


def parse_example(record: bytes) -> ClipExample:
    """A serialized SequenceExample -> ClipExample with every frame decoded (for tools and tests)."""
    seq = _parse(record)
    example_id = b"".join(_context(seq, ID_KEY, "bytes_list")).decode()
    frames = _decode_jpegs(_frame_bytes(seq, IMAGE_KEY), f"example '{example_id}': frame")
    if not frames:
        raise DataError(f"example '{example_id}' has no '{IMAGE_KEY}' frames")
    labels, strings = {}, {}
    for key in seq.context.feature:
        match = re.fullmatch(r"clip/label(?:/(.+))?/(index|string)", key)
        if match:
            name = match.group(1) or "label"
            if match.group(2) == "index":
                labels[name] = [int(v) for v in _context(seq, key, "int64_list")]
            else:
                strings[name] = [v.decode() for v in _context(seq, key, "bytes_list")]
    out = ClipExample(id=example_id, frames=np.stack(frames), labels=labels, label_strings=strings,
                      fps=(_context(seq, FRAME_RATE_KEY, "float_list") or [30.0])[0],
                      media_id=b"".join(_context(seq, MEDIA_ID_KEY, "bytes_list")).decode())
    if AUDIO_KEY in seq.feature_lists.feature_list:
        out.audio = np.asarray(seq.feature_lists.feature_list[AUDIO_KEY].feature[0].float_list.value, np.float32)
        out.sample_rate = int(_context(seq, AUDIO_RATE_KEY, "float_list")[0])
    flow = _frame_bytes(seq, FLOW_KEY)
    if flow:
        out.flow = np.stack([f[..., :2] for f in _decode_jpegs(flow, f"example '{example_id}': flow frame")])
    return out


def record_modalities(record: bytes) -> tuple[str, ...]:
    """The modalities a serialized record holds, in MODALITIES order (a stream with no data is absent)."""
    lists = _parse(record).feature_lists.feature_list
    return tuple(m for m in MODALITIES if MODALITY_KEYS[m] in lists and lists[MODALITY_KEYS[m]].feature)


def _first_record(files: Sequence[str]) -> tuple[str, bytes] | None:
    """The first readable record of the files, with its file; None if there is none."""
    for path in files:
        try:
            for record in _read_file(path):
                return path, record
        except (tf.errors.OpError, OSError):
            continue  # a corrupt file is the pipeline's to skip and count
    return None


def check_modalities(files: Sequence[str], modalities: Sequence[str]) -> None:
    """Raises DataError when the first record of `files` lacks one of `modalities`.

    Records are written with or without flow and audio for a whole run of `mtv data prepare`, so
    one record without a stream means the dataset has none: a clear error here, instead of a
    pipeline that skips every record (or, repeating for training, never yields).
    """
    first = _first_record(files)
    if first is None:
        return
    path, record = first
    try:
        seq = _parse(record)
        present = record_modalities(record)
    except DataError:
        return  # a corrupt record is skipped and counted by the pipeline
    # Frames are in every record prepare writes; a record without them is corrupt, skipped by the pipeline.
    missing = [m for m in modalities if m != "rgb" and m not in present]
    if missing:
        example_id = b"".join(_context(seq, ID_KEY, "bytes_list")).decode(errors="replace")
        names = ", ".join(f"{m} ('{MODALITY_KEYS[m]}')" for m in missing)
        flags = " ".join(f"--{m}" for m in missing)
        raise DataError(f"'{path}': record '{example_id}' has no {names}, which the model's modalities "
                        f"{list(modalities)} need; it holds {list(present)}. Write the records with "
                        f"`mtv data prepare ... {flags}`, or train a model without {' and '.join(missing)}")


def shard_path(out_dir: str | Path, name: str, index: int, num_shards: int) -> Path:
    """`<out_dir>/<name>-00000-of-00004.tfrecord`."""
    return Path(out_dir) / f"{name}-{index:05d}-of-{num_shards:05d}.tfrecord"


class ShardedWriter:
    """Writes serialized examples round-robin into `num_shards` TFRecord files.

    Shards are written under hidden temporary names and renamed into place only when all are complete, so a
    failure (no space, unwritable output) leaves no shard that looks finished; OS errors are WriteErrors.
    """

    def __init__(self, out_dir: str | Path, name: str, num_shards: int = 1):
        if num_shards < 1:
            raise DataError(f"num_shards must be >= 1, got {num_shards}")
        self.paths = [shard_path(out_dir, name, i, num_shards) for i in range(num_shards)]
        self._tmp = [p.with_name(f".{p.name}.tmp") for p in self.paths]
        self.counts = [0] * num_shards
        self._writers = []
        self._next = 0
        with writing(out_dir):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        try:
            for tmp, path in zip(self._tmp, self.paths, strict=True):
                with writing(path):
                    self._writers.append(tf.io.TFRecordWriter(str(tmp)))
        except BaseException:
            self._discard()
            raise

    def write(self, example: ClipExample | bytes) -> None:
        """Appends one example to the next shard."""
        data = example if isinstance(example, bytes) else serialize_example(example)
        with writing(self.paths[self._next]):
            self._writers[self._next].write(data)
        self.counts[self._next] += 1
        self._next = (self._next + 1) % len(self._writers)

    def close(self) -> None:
        """Flushes and closes every shard and renames it into place."""
        try:
            for writer, path in zip(self._writers, self.paths, strict=False):
                with writing(path):
                    writer.close()
            for tmp, path in zip(self._tmp, self.paths, strict=True):
                with writing(path):
                    os.replace(tmp, path)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        for tmp in self._tmp:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


def write_tfrecords(examples: Iterable[ClipExample], out_dir: str | Path, *, name: str,
                    num_shards: int = 1) -> list[Path]:
    """Writes examples into `<out_dir>/<name>-0000i-of-0000N.tfrecord`; returns the shard paths."""
    with ShardedWriter(out_dir, name, num_shards) as writer:
        for example in examples:
            writer.write(example)
    return writer.paths


def resolve_files(file_pattern: str | Path | Sequence[str | Path]) -> list[str]:
    """TFRecord files from a glob, a directory, `<prefix>@N`, or a list of any of these."""
    if isinstance(file_pattern, list | tuple):
        return [f for p in file_pattern for f in resolve_files(p)]
    pattern = str(file_pattern)
    match = re.fullmatch(r"(.+)@(\d+)", pattern)
    if match:
        prefix, n = match.group(1), int(match.group(2))
        files = [str(shard_path(Path(prefix).parent, Path(prefix).name, i, n)) for i in range(n)]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"'{pattern}': {len(missing)} of {n} shards are missing, e.g. '{missing[0]}'")
        return files
    if Path(pattern).is_dir():
        files = sorted(glob.glob(str(Path(pattern) / "*.tfrecord*")))
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"no TFRecord files match '{pattern}'")
    return files


def count_records(file_pattern) -> int:
    """Number of records in the files (Scenic's `examples_per_subset`)."""
    return sum(1 for f in resolve_files(file_pattern) for _ in tf.data.TFRecordDataset(f))


class SkipCounter:
    """Counts (thread-safely) the examples a dataset skipped, and keeps the first reasons."""

    def __init__(self, keep: int = 100):
        self.count = 0
        self.reasons: list[str] = []
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        """Records one skipped example and logs a warning."""
        with self._lock:
            self.count += 1
            if len(self.reasons) < self._keep:
                self.reasons.append(reason)
        logging.warning("skipped an example: %s", reason)

    def __repr__(self) -> str:
        return f"SkipCounter(count={self.count})"


def _num_classes_by_name(label_names: Sequence[str], num_classes) -> dict[str, int]:
    if not label_names:
        return {}
    if num_classes is None:
        raise ConfigError(f"make_dataset needs num_classes for labels {list(label_names)}")
    if isinstance(num_classes, Mapping):
        missing = [n for n in label_names if n not in num_classes]
        if missing:
            raise ConfigError(f"num_classes has no entry for labels {missing}; got {dict(num_classes)}")
        counts = {n: num_classes[n] for n in label_names}
    elif isinstance(num_classes, int):
        counts = dict.fromkeys(label_names, num_classes)
    else:
        num_classes = list(num_classes)
        if len(num_classes) != len(label_names):
            raise ConfigError(f"num_classes {num_classes} must have one entry per label name {list(label_names)}")
        counts = dict(zip(label_names, num_classes, strict=True))
    bad = {n: c for n, c in counts.items() if not isinstance(c, int) or c < 1}
    if bad:
        raise ConfigError(f"num_classes must be positive integers, got {bad}")
    return counts


@dataclasses.dataclass(frozen=True)
class _Spec:
    config: DataConfig
    is_train: bool
    classes: dict[str, int]
    modalities: tuple[str, ...]
    audio: audio_lib.AudioConfig
    audio_frames: int
    flow_frames: int


def _section(dataset_configs, name: str) -> dict:
    cfg = dataset_configs.to_dict() if hasattr(dataset_configs, "to_dict") else dict(dataset_configs or {})
    section = cfg.get(name) or {}
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _modality_settings(dataset_configs, config: DataConfig) -> tuple[audio_lib.AudioConfig, int, int]:
    """AudioConfig, spectrogram frames and flow frames from `dataset_configs.audio` / `.flow`."""
    audio = _section(dataset_configs, "audio")
    audio_frames = int(audio.pop("num_frames", None) or DEFAULT_AUDIO_FRAMES)
    fields = {f.name for f in dataclasses.fields(audio_lib.AudioConfig)}
    unknown = sorted(set(audio) - fields)
    if unknown:
        raise ConfigError(f"dataset_configs.audio has unknown fields {unknown}; expected num_frames and "
                          f"{sorted(fields)}")
    flow = _section(dataset_configs, "flow")
    flow_frames = int(flow.get("num_frames") or config.num_frames)
    if audio_frames < 1 or flow_frames < 1:
        raise ConfigError(f"dataset_configs.audio.num_frames ({audio_frames}) and dataset_configs.flow.num_frames "
                          f"({flow_frames}) must be >= 1")
    return audio_lib.AudioConfig(**audio), audio_frames, flow_frames


class _RecordDecoder:
    """Host-side decoding of one record into sampled uint8 clips, labels and id (or a skip)."""

    def __init__(self, spec: _Spec, counter: SkipCounter):
        self.spec, self.counter = spec, counter

    def dtypes(self) -> list[tf.DType]:
        """Output dtypes, in `__call__`'s order."""
        out = [tf.uint8] + [tf.float32] * len(self.spec.classes) + [tf.string]
        out += [tf.float32] * ("flow" in self.spec.modalities) + [tf.float32] * ("audio" in self.spec.modalities)
        return out + [tf.bool]

    def __call__(self, record: bytes, seed: np.ndarray) -> list:
        try:
            return self._decode(record, seed) + [np.bool_(True)]
        except Exception as e:  # anything wrong with one record must only skip that record
            self.counter.add(str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}")
            return self._dummy() + [np.bool_(False)]

    def _dummy(self) -> list:
        spec = self.spec
        out = [np.zeros((1, 1, 1, 3), np.uint8)]
        out += [np.zeros(c, np.float32) for c in spec.classes.values()] + [np.bytes_(b"")]
        out += [np.zeros((1, 1, 1, 2), np.float32)] * ("flow" in spec.modalities)
        out += [np.zeros((1, 1), np.float32)] * ("audio" in spec.modalities)
        return out

    def _decode(self, record: bytes, seed: np.ndarray) -> list:
        spec, cfg = self.spec, self.spec.config
        seq = _parse(record)
        example_id = b"".join(_context(seq, ID_KEY, "bytes_list"))
        what = f"example '{example_id.decode(errors='replace')}'"
        encoded = _frame_bytes(seq, IMAGE_KEY)
        if not encoded:
            raise DataError(f"{what} has no '{IMAGE_KEY}' frames")
        if spec.is_train:
            rng = np.random.default_rng(np.asarray(seed, np.int64) & 0x7FFFFFFF)
            indices = train_clip_indices(len(encoded), cfg.num_frames, cfg.stride, rng, source=what)
        else:
            indices = eval_clip_indices(len(encoded), cfg.num_frames, cfg.stride, cfg.num_test_clips,
                                        source=what).reshape(-1)
        unique, inverse = np.unique(indices, return_inverse=True)
        decoded = _decode_jpegs([encoded[i] for i in unique], f"{what}: frame", unique)
        frames = np.stack(decoded)[inverse]
        out = [frames]
        for name, count in spec.classes.items():
            values = np.asarray(_context(seq, label_index_key(name), "int64_list"), np.int64) - cfg.label_offset
            if values.size == 0:
                raise DataError(f"{what} has no '{label_index_key(name)}' label")
            if values.min() < 0 or values.max() >= count:
                raise DataError(f"{what}: label '{name}' {values.tolist()} is outside [0, {count})")
            hot = np.zeros(count, np.float32)
            hot[values] = 1.0
            out.append(hot)
        out.append(np.bytes_(example_id))
        if "flow" in spec.modalities:
            out.append(self._flow(seq, indices, frames.shape[1:3], what, len(encoded)))
        if "audio" in spec.modalities:
            out.append(self._waveform(seq, indices, what))
        return out

    def _flow(self, seq, indices: np.ndarray, size: tuple[int, int], what: str, num_rgb: int) -> np.ndarray:
        encoded = _frame_bytes(seq, FLOW_KEY)
        if not encoded:
            raise DataError(f"{what} has no '{FLOW_KEY}' flow frames")
        cfg, clips = self.spec.config, indices.reshape(-1, self.spec.config.num_frames)
        if self.spec.flow_frames != cfg.num_frames:  # spread the flow frames over each RGB clip
            span = np.linspace(0, (cfg.num_frames - 1) * cfg.stride, self.spec.flow_frames).round().astype(np.int64)
            clips = (clips[:, :1] + span[None]) % num_rgb
        picks = np.minimum(clips.reshape(-1), len(encoded) - 1)  # T RGB frames have T - 1 flow frames
        unique, inverse = np.unique(picks, return_inverse=True)
        flow = np.stack(_decode_jpegs([encoded[i] for i in unique], f"{what}: flow frame", unique))[..., :2]
        return flow_lib.resize_flow(flow_lib.dequantize(flow), *size)[inverse]

    def _waveform(self, seq, indices: np.ndarray, what: str) -> np.ndarray:
        lists = seq.feature_lists.feature_list
        if AUDIO_KEY not in lists or not lists[AUDIO_KEY].feature:
            raise DataError(f"{what} has no '{AUDIO_KEY}' waveform")
        waveform = np.asarray(lists[AUDIO_KEY].feature[0].float_list.value, np.float32)
        rate = int((_context(seq, AUDIO_RATE_KEY, "float_list") or [48000])[0])  # DMVR's default rate
        fps = (_context(seq, FRAME_RATE_KEY, "float_list") or [30.0])[0]
        clips = indices.reshape(-1, self.spec.config.num_frames)
        return np.stack([audio_lib.clip_waveform(waveform, rate, fps, clip, self.spec.audio,
                                                 self.spec.audio_frames) for clip in clips])


def _read_file(path: str):
    """The records of one TFRecord file, checksums verified (DataLossError past a corrupt one)."""
    if _record_iterator is None:
        yield from (r.numpy() for r in tf.data.TFRecordDataset(path))
        return
    with _silence():
        yield from _record_iterator(path)


def _records(files: list[str], is_train: bool, seed: int | None, counter: SkipCounter):
    """A generator factory over (record, seed) that survives corrupt or truncated files."""
    rng = np.random.default_rng(seed)

    def generate():
        order = rng.permutation(len(files)) if is_train else range(len(files))
        for i in order:
            read = 0
            try:
                for record in _read_file(files[i]):
                    read += 1
                    yield record, rng.integers(0, 2**31 - 1, size=2, dtype=np.int32)
            except (tf.errors.DataLossError, tf.errors.OpError) as e:
                counter.add(f"'{files[i]}' is corrupt after record {read}; the rest of it is skipped "
                            f"({e.message.splitlines()[0] if e.message else type(e).__name__})")

    return generate


def make_dataset(
    file_pattern,
    *,
    dataset_configs,
    is_train: bool,
    batch_size: int,
    label_names: Sequence[str] = ("label",),
    num_classes: int | Sequence[int] | Mapping[str, int] | None = None,
    seed: int | None = None,
    modalities: Sequence[str] = ("rgb",),
    with_ids: bool = False,
    repeat: bool | None = None,
    shuffle_buffer: int = 64,
    skip_counter: SkipCounter | None = None,
) -> tf.data.Dataset:
    """A batched dataset of `(inputs, labels)` from TFRecords written by `write_tfrecords`.

    inputs: float32 [B, T, crop, crop, 3] in [-1, 1] when training; for evaluation
      [B, views, T, crop, crop, 3] with views = num_test_clips x (3 or 1) crops, clip-major (view
      `c * crops + k` is crop `k` of clip `c`). With more modalities than "rgb", a dict with "rgb",
      "flow" (float32 [B, (views,) T_flow, crop, crop, 2] over the same clip, same crop and flip) and
      "audio" (log-mel float32 [B, (views,) F, mel_bins, 1] starting at the clip's first frame), the
      inputs of `mtv.models.mm_backbone.MMBackbone`. Their settings come from `dataset_configs.flow.num_frames`
      (default num_frames) and `dataset_configs.audio` (`AudioConfig` fields plus num_frames = F,
      default 800).
    labels: one-hot (multi-hot) float32 [B, num_classes] for a single label name, a dict by name for
      several (e.g. ("verb", "noun")), and left out entirely when `label_names` is empty.
    with_ids: append the `example/id` strings [B] to each element.

    Training shuffles files and records (`shuffle_buffer` serialized records, each a whole video),
    repeats (unless `repeat=False`) and drops the last partial batch; evaluation reads each record
    once, in file order. `seed` makes sampling and augmentation
    deterministic. Skipped examples are counted in `skip_counter` (also `dataset.skip_counter`).
    """
    config = data_config(dataset_configs)
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or "rgb" not in modalities:
        raise ConfigError(f"modalities {list(modalities)} must include 'rgb' and come from {list(MODALITIES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    classes = _num_classes_by_name(tuple(label_names), num_classes)
    spec = _Spec(config, is_train, classes, modalities, *_modality_settings(dataset_configs, config))
    counter = skip_counter if skip_counter is not None else SkipCounter()
    files = resolve_files(file_pattern)
    check_modalities(files, modalities)
    decoder = _RecordDecoder(spec, counter)

    ds = tf.data.Dataset.from_generator(
        _records(files, is_train, seed, counter),
        output_signature=(tf.TensorSpec((), tf.string), tf.TensorSpec((2,), tf.int32)))
    if is_train and (repeat is None or repeat):
        ds = ds.repeat()
    if is_train:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True if seed is not None else None)

    def host_decode(record, element_seed):
        outputs = tf.numpy_function(decoder, [record, element_seed], decoder.dtypes(), stateful=True)
        return tuple(outputs) + (element_seed,)

    # The transforms use tf.cond where they branch on tensors; autograph would only add tracing time.
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.map(plain(host_decode), **parallel).filter(plain(lambda *x: x[-2]))
    ds = ds.map(plain(lambda *x: _to_element(x, spec, with_ids)), **parallel)
    ds = ds.batch(batch_size, drop_remainder=is_train).prefetch(tf.data.AUTOTUNE)
    ds.skip_counter = counter
    return ds


def _to_element(values, spec: _Spec, with_ids: bool):
    """TF-side transforms of one decoded example, then the (inputs, labels[, ids]) structure."""
    cfg = spec.config
    values = list(values)
    frames = values.pop(0)
    labels = [values.pop(0) for _ in spec.classes]
    example_id = values.pop(0)
    flow = values.pop(0) if "flow" in spec.modalities else None
    waveform = values.pop(0) if "audio" in spec.modalities else None
    seed = values[-1]
    frames.set_shape([None, None, None, 3])
    if flow is not None:
        flow.set_shape([None, None, None, 2])
    inputs = {}
    if spec.is_train:
        inputs["rgb"] = transforms.train_transform(frames, cfg, seed)
        inputs["rgb"].set_shape([cfg.num_frames, cfg.crop_size, cfg.crop_size, 3])
        if flow is not None:
            inputs["flow"] = transforms.train_transform(flow, cfg, seed, is_flow=True)
            inputs["flow"].set_shape([spec.flow_frames, cfg.crop_size, cfg.crop_size, 2])
        if waveform is not None:
            inputs["audio"] = audio_lib.log_mel_spectrogram(waveform[0], spec.audio)[..., None]
    else:
        views = cfg.num_views
        clip_shape = [cfg.num_test_clips, cfg.num_frames]
        clips = tf.reshape(frames, tf.concat([clip_shape, tf.shape(frames)[1:]], 0))
        inputs["rgb"] = transforms.eval_transform(clips, cfg)
        inputs["rgb"].set_shape([views, cfg.num_frames, cfg.crop_size, cfg.crop_size, 3])
        if flow is not None:
            clips = tf.reshape(flow, tf.concat([[cfg.num_test_clips, spec.flow_frames], tf.shape(flow)[1:]], 0))
            inputs["flow"] = transforms.eval_transform(clips, cfg, is_flow=True)
            inputs["flow"].set_shape([views, spec.flow_frames, cfg.crop_size, cfg.crop_size, 2])
        if waveform is not None:
            spectrogram = audio_lib.log_mel_spectrogram(waveform, spec.audio)[..., None]  # [clips, F, mel, 1]
            inputs["audio"] = tf.repeat(spectrogram, cfg.num_spatial_crops, axis=0)
    if "audio" in inputs:  # the waveform comes from numpy_function, so its rank is unknown until set here
        views = [] if spec.is_train else [cfg.num_views]
        inputs["audio"].set_shape(views + [spec.audio_frames, spec.audio.num_mel_bins, 1])
    element = (inputs["rgb"] if spec.modalities == ("rgb",) else inputs,)
    if spec.classes:
        for label, count in zip(labels, spec.classes.values(), strict=True):
            label.set_shape([count])
        named = dict(zip(spec.classes, labels, strict=True))
        element += (labels[0] if len(labels) == 1 else named,)
    if with_ids:
        element += (example_id,)
    return element if len(element) > 1 else element[0]
