"""The dataset registry: `config.dataset_name` -> a builder of training and held-out data.

The trainer calls `build_datasets(config, workdir)` once and gets back a `TrainingData`: the model's heads,
the training batches (`train_dataset`) and each dataset's held-out data. It knows no dataset by name.

Registered here:
  'video_tfrecord_dataset'  Scenic's: `dataset_configs.base_dir` + `dataset_configs.tables.{train,validation}`
                            (a glob, a directory, or `<prefix>@N`), read by `mtv.data.tfrecord.make_dataset`.
  'video_csv'               `dataset_configs.train_csv` / `eval_csv` (see `mtv.data.prepare`), converted
                            once into TFRecords under `<workdir>/data/` before training starts.
  'arrays'                  in-memory clips: `train(..., train_data=(clips, labels))`.
and in `mtv.data.synthetic`: 'camera_motion' (generated clips, `dataset_configs.synthetic.*`).
A new dataset is a function `build(request: DatasetRequest) -> DataSpec` decorated with
`@register_dataset("name")`.

The data feeds the model's input streams (`mtv.data.streams`): the registry asks the model config for them
(`model_streams`: RGB alone for MTV; rgb/flow/audio for M&M) and the TFRecord and CSV datasets read them,
sized as the model takes them; the 'arrays' dataset takes a dict of stream arrays. `train_dataset` hands the
model exactly its streams, mixes them with one mixup lambda per batch and applies modality dropout; under
tf.distribute it builds one input pipeline's per-replica batches (`input_context`).

Co-finetuning (`config.cofinetune = True`) reads `config.datasets`, a list of dataset entries each with
`name`, `dataset_name`, `dataset_configs` (overrides of the main one), `num_classes` and
`sampling_weight`; the model gets one head per entry, named by `name`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtv.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

    from mtv.data.sources import Source


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


# ------------------------------------------------------------------------------------ products
@dataclasses.dataclass
class DataSpec:
    """One dataset of a run: its training source and its held-out data (arrays or TFRecord files)."""

    name: str
    source: Source
    eval_files: list[str] | None = None  # TFRecords for validation
    eval_arrays: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # uint8 clips, int labels
    eval_configs: dict | None = None  # dataset_configs for reading eval_files
    skipped: list = dataclasses.field(default_factory=list)  # (video, reason) skipped while preparing
    class_names: list[str] | None = None  # of its single label, when the dataset defines them
    held_out: str = "the config's validation data"  # what the held-out accuracy is measured on
    modalities: tuple[str, ...] = ("rgb",)  # the streams eval_files are read with

    @property
    def has_eval(self) -> bool:
        """Whether the dataset has held-out data."""
        return self.eval_arrays is not None or bool(self.eval_files)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
        """Single-view (centre clip) held-out batches: float frames in [-1, 1] (a dict of streams for several),
        {label: one-hot}."""
        from mtv.data.sources import normalize_frames, one_hot
        from mtv.data.streams import normalize_streams

        classes = self.source.classes
        if self.eval_arrays is not None:
            clips, labels = self.eval_arrays
            hot = {k: one_hot(v, classes[k], k) for k, v in labels.items()}
            count = len(next(iter(clips.values()))) if isinstance(clips, Mapping) else len(clips)
            for start in range(0, count, batch_size):
                part = slice(start, start + batch_size)
                x = (normalize_streams({m: v[part] for m, v in clips.items()}) if isinstance(clips, Mapping)
                     else normalize_frames(clips[part]))
                yield x, {k: v[part] for k, v in hot.items()}
        elif self.eval_files:
            from mtv.data import tfrecord

            dc = {**(self.eval_configs or {}), "num_test_clips": 1, "do_three_spatial_crops": False}
            ds = tfrecord.make_dataset(self.eval_files, dataset_configs=dc, is_train=False, batch_size=batch_size,
                                       label_names=tuple(classes), num_classes=classes, modalities=self.modalities)
            for x, y in ds:
                y = y if isinstance(y, dict) else {next(iter(classes)): y}
                x = {m: v.numpy()[:, 0] for m, v in x.items()} if isinstance(x, Mapping) else x.numpy()[:, 0]
                yield x, {k: v.numpy() for k, v in y.items()}


@dataclasses.dataclass(frozen=True)
class DatasetRequest:
    """What a builder is asked for: one dataset of a run, its options and where the run lives."""

    name: str  # the dataset's name in the run (its head's name under co-finetuning)
    dataset_name: str  # the registered builder
    dataset_configs: dict  # plain dict
    classes: dict[str, int]  # label name -> classes, resolved from the config before building
    workdir: Path
    videos: str | None = None  # source videos for datasets that render clips from videos
    arrays: Any = None  # in-memory training data ('arrays'): (clips, labels) or a Source
    eval_arrays: Any = None  # in-memory held-out data ('arrays'): (clips, labels)
    streams: dict = dataclasses.field(default_factory=dict)  # the model's input streams (spec['modalities'])

    @property
    def modalities(self) -> tuple[str, ...]:
        """The model's stream names, rgb/flow/audio order (('rgb',) for MTV)."""
        from mtv.data.streams import stream_names

        return stream_names(self.streams)


@dataclasses.dataclass
class TrainingData:
    """What `build_datasets` returns: the model's heads, the datasets, and how to draw training batches."""

    heads: dict[str, int]  # model head -> classes
    parts: list[tuple[DataSpec, dict[str, str]]]  # each dataset with {its label -> model head}
    weights: list[float]  # co-finetuning sampling weights, one per part

    @property
    def num_examples(self) -> int:
        """Training examples in all datasets (0 when unknown)."""
        return sum(spec.source.num_examples or 0 for spec, _ in self.parts)

    @property
    def has_eval(self) -> bool:
        """Whether any dataset has held-out data."""
        return any(spec.has_eval for spec, _ in self.parts)

    @property
    def skipped(self) -> int:
        """Examples skipped so far: while preparing, and while reading (counted by the sources)."""
        return sum(len(spec.skipped) + int(getattr(spec.source.skip_counter, "count", 0) or 0)
                   for spec, _ in self.parts)

    @property
    def class_names(self) -> list[str] | None:
        """The class names a single-dataset, single-head run's dataset defines (else None)."""
        if len(self.parts) == 1 and len(self.heads) == 1:
            return self.parts[0][0].class_names
        return None

    @property
    def held_out(self) -> str:
        """What held-out accuracy is measured on, in words."""
        return "; ".join(dict.fromkeys(spec.held_out for spec, _ in self.parts))

    def train_dataset(self, batch_size: int, *, seed: int, start_step: int = 0, mixup_alpha: float = 0.0,
                      inputs: Mapping[str, tuple] | None = None,
                      modality_dropout: Mapping[str, float] | None = None,
                      input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        """Global training batches (inputs, labels by head) from step `start_step` on.

        inputs: the model's `input_shapes`; each dataset is checked against them and gives exactly those
          streams (a bare clip for one). modality_dropout: {stream: probability} (`mixing.drop_modalities`),
          applied after mixup so a dropped stream is exactly the missing value the model sees at test time.
        input_context: under tf.distribute, the input pipeline to build: its per-replica batches of
          batch_size / replicas examples from per-pipeline sources, mixed per replica batch (`mtv.data.mixing`).
        """
        from mtv.data import mixing
        from mtv.data.sources import PipelineShare

        share = None if input_context is None else PipelineShare.of(batch_size, input_context)
        single = len(self.heads) == 1
        datasets = []
        for i, (spec, label_map) in enumerate(self.parts):
            ds = spec.source.batches(batch_size, start_step, seed + 1000 * i, input_context)
            if inputs is not None:
                ds = _fit_inputs(ds, inputs, f"dataset '{spec.name}'")
            datasets.append(mixing.to_heads(ds, label_map, self.heads, single))
        dataset = datasets[0] if len(datasets) == 1 else mixing.mixture(datasets, self.weights, seed=seed,
                                                                           start_step=start_step, share=share)
        if mixup_alpha > 0:
            dataset = mixing.mixup_batches(dataset, mixup_alpha, seed=seed, start_step=start_step, share=share)
        if modality_dropout:
            if not isinstance(dataset.element_spec[0], Mapping):
                raise ConfigError("config.modality_dropout needs a model with several streams (model.modalities)")
            dataset = mixing.modality_dropout_batches(dataset, modality_dropout, seed=seed, start_step=start_step,
                                                      share=share)
        return dataset.prefetch(2)


def _fit_inputs(ds: tf.data.Dataset, inputs: Mapping[str, tuple], where: str) -> tf.data.Dataset:
    """`ds` giving exactly the model's streams, their shapes checked against `inputs` before any step runs."""
    from mtv.data.streams import select_streams

    names = list(inputs)
    given = ds.element_spec[0]
    x_spec = select_streams(given, names, where=where)
    for name, spec in ({names[0]: x_spec} if len(names) == 1 else x_spec).items():
        got, want = tuple(spec.shape[1:]), tuple(inputs[name])
        if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want, strict=True)):
            raise DataError(f"{where} gives '{name}' batches of shape {tuple(spec.shape)}; the model takes "
                            f"(B, {', '.join(map(str, want))}) (check dataset_configs against the model config)")
    if not isinstance(given, Mapping) or (len(names) > 1 and list(given) == names):
        return ds  # already the model's structure
    return ds.map(lambda x, y: (select_streams(x, names, where=where), y))


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    """A registry entry: the builder and, for datasets with fixed labels, their class count."""

    name: str
    build: Callable[[DatasetRequest], DataSpec]
    num_classes: int | None = None  # fixed by the dataset (e.g. generated data); else from the config
    classes: Callable[[DatasetRequest], dict[str, int]] | None = None  # labels, when neither of the above


_REGISTRY: dict[str, RegisteredDataset] = {}
_BUILTIN_MODULES = ("mtv.data.synthetic", "mtv.long.datasets")  # modules that register datasets when imported


def register_dataset(name: str, *, num_classes: int | None = None,
                     classes: Callable[[DatasetRequest], dict[str, int]] | None = None) -> Callable:
    """Decorator: registers `build(request) -> DataSpec` as the dataset `name` (config.dataset_name)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a dataset name must be a non-empty string, got {name!r}")

    def decorate(build: Callable[[DatasetRequest], DataSpec]) -> Callable[[DatasetRequest], DataSpec]:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ConfigError(f"dataset '{name}' is registered twice ({_REGISTRY[name].build.__module__} and "
                              f"{build.__module__})")
        _REGISTRY[name] = RegisteredDataset(name, build, num_classes, classes)
        return build

    return decorate


def unregister_dataset(name: str) -> None:
    """Removes a registered dataset (for tests and notebooks that register their own)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_datasets() -> list[str]:
    """The names of every registered dataset, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_dataset(name: str, *, field: str = "config.dataset_name") -> RegisteredDataset:
    """The registry entry of `name`; an unknown name is a ConfigError naming `field` and the close matches."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{field} is {name!r}, which is not a registered dataset{hint} Known datasets: "
                      f"{', '.join(sorted(_REGISTRY))} (or pass train_data= to mtv.training.trainer.train)")


# ------------------------------------------------------------------------------------- classes
def classes_from_configs(dataset_configs: Mapping, num_classes: int | None = None) -> dict[str, int]:
    """Label name -> classes from `class_splits`/`split_names` (several heads) or `num_classes`."""
    splits, names = dataset_configs.get("class_splits"), dataset_configs.get("split_names")
    if splits:
        if not names or len(names) != len(splits):
            raise ConfigError(f"dataset_configs.split_names {names} must name each of the class_splits {splits}")
        return dict(zip(names, [int(s) for s in splits], strict=True))
    if num_classes is None:
        num_classes = dataset_configs.get("num_classes")
    if not num_classes:
        raise ConfigError("dataset_configs.num_classes is missing (or class_splits/split_names for several heads)")
    return {"label": int(num_classes)}


def _classes(entry: RegisteredDataset, request: DatasetRequest, num_classes: int | None) -> dict[str, int]:
    if entry.num_classes is not None:
        if num_classes not in (None, entry.num_classes):
            raise ConfigError(f"dataset '{entry.name}' has {entry.num_classes} classes, the config says {num_classes}")
        return {"label": entry.num_classes}
    if entry.classes is not None:
        return dict(entry.classes(request))
    return classes_from_configs(request.dataset_configs, num_classes)


# --------------------------------------------------------------------------------- build_datasets
def build_datasets(config: Any, workdir: str | os.PathLike, *, train_data=None, eval_data=None,
                   videos: str | None = None,
                   check_heads: Callable[[dict[str, int]], None] | None = None) -> TrainingData:
    """The heads, training sources and held-out data that `config` describes, built once.

    train_data / eval_data: in-memory data (the 'arrays' dataset) instead of the config's dataset.
    videos: source videos for datasets that render clips from videos (camera_motion).
    check_heads: called with {head: classes} before any data is read (the trainer checks the model
      config there, so a bad config fails before a slow data preparation).
    """
    workdir = Path(workdir)
    base = _plain(config.get("dataset_configs")) or {}
    if config.get("cofinetune"):
        plans = _cofinetune_plans(config, base, workdir, videos)
    else:
        name = "arrays" if train_data is not None else config.get("dataset_name")
        entry = get_dataset(name)
        request = DatasetRequest("data", name, base, {}, workdir, videos, train_data, eval_data)
        request = dataclasses.replace(request, classes=_classes(entry, request, None))
        plans = [(entry, request, None, 1.0)]
    if config.get("cofinetune"):
        heads = {request.name: next(iter(request.classes.values())) for _, request, _, _ in plans}
    else:
        heads = dict(plans[0][1].classes)
    if check_heads is not None:
        check_heads(heads)
    streams = model_streams(config, heads)
    parts, weights = [], []
    for entry, request, head, weight in plans:
        spec = entry.build(dataclasses.replace(request, streams=streams))
        if spec.source.classes != request.classes:
            raise DataError(f"dataset '{entry.name}' built labels {spec.source.classes}; its config says "
                            f"{request.classes}")
        label_map = {k: k for k in spec.source.classes} if head is None else {next(iter(spec.source.classes)): head}
        parts.append((spec, label_map))
        weights.append(weight)
    return TrainingData(heads, parts, weights)


def model_streams(config: Any, heads: Mapping[str, int]) -> dict[str, dict]:
    """The input streams of the model `config` builds for these heads (its spec's 'modalities')."""
    from mtv.models.spec import spec_from_config

    if not (config.get("model") or {}):
        return {}  # no model section: the data alone (RGB), as before the model existed
    if len(heads) == 1:
        spec = spec_from_config(config, num_classes=next(iter(heads.values())))
    else:
        spec = spec_from_config(config, class_splits=list(heads.values()), split_names=list(heads))
    return spec["modalities"]


def _cofinetune_plans(config, base: dict, workdir: Path, videos: str | None) -> list:
    entries = config.get("datasets")
    if not entries:
        raise ConfigError("cofinetune=True needs config.datasets: a list of {name, dataset_name, "
                          "dataset_configs, num_classes, sampling_weight}")
    plans, names = [], set()
    for i, entry_cfg in enumerate(entries):
        entry_cfg = _plain(entry_cfg)
        name = entry_cfg.get("name") or f"dataset{i}"
        if name in names:
            raise ConfigError(f"config.datasets: name '{name}' is used twice; each dataset needs its own head")
        names.add(name)
        dc = {**base, **(entry_cfg.get("dataset_configs") or {})}
        for key in ("class_splits", "split_names"):
            dc.pop(key, None)
        entry = get_dataset(entry_cfg.get("dataset_name"), field=f"config.datasets[{i}].dataset_name")
        request = DatasetRequest(name, entry.name, dc, {}, workdir, videos)
        classes = _classes(entry, request, entry_cfg.get("num_classes"))
        if len(classes) != 1:
            raise ConfigError(f"co-finetuning dataset '{name}' must have one label, got {list(classes)}")
        plans.append((entry, dataclasses.replace(request, classes=classes), name,
                      float(entry_cfg.get("sampling_weight", 1.0))))
    return plans


# ----------------------------------------------------------------------------------- builders
@register_dataset("video_tfrecord_dataset")
def build_tfrecord_dataset(request: DatasetRequest) -> DataSpec:
    """Scenic's TFRecord tables: `base_dir` + `tables.train` (+ `tables.validation`)."""
    from mtv.data.sources import tfrecord_source
    from mtv.data.streams import reader_configs, reader_modalities

    dc = reader_configs(request.dataset_configs, request.streams)
    tables = dc.get("tables") or {}
    base = dc.get("base_dir") or ""
    if not tables.get("train"):
        raise ConfigError("dataset_configs.tables.train is missing (a TFRecord glob, directory or name@N)")
    examples = (dc.get("examples_per_subset") or {}).get("train") or None
    modalities = reader_modalities(request.streams)
    source = tfrecord_source(os.path.join(base, tables["train"]), dc, request.classes, name=request.name,
                             num_examples=examples, modalities=modalities)
    valid = tables.get("validation")
    return DataSpec(request.name, source, eval_files=_files_or_none(os.path.join(base, valid)) if valid else None,
                    eval_configs=dc, modalities=modalities)


@register_dataset("video_csv")
def build_csv_dataset(request: DatasetRequest) -> DataSpec:
    """A CSV of videos (`train_csv`, optional `eval_csv`), converted once into TFRecords in the workdir."""
    from mtv.data.sources import tfrecord_source
    from mtv.data.streams import reader_configs, reader_modalities

    dc = reader_configs(request.dataset_configs, request.streams)
    if not dc.get("train_csv"):
        raise ConfigError("dataset_name 'video_csv' needs dataset_configs.train_csv")
    modalities = reader_modalities(request.streams)
    files, count, skipped = _prepare_csv(dc["train_csv"], request.workdir, f"{request.name}-train", dc,
                                         request.classes, modalities)
    source = tfrecord_source(files, dc, request.classes, name=request.name, num_examples=count,
                             modalities=modalities)
    eval_files = None
    if dc.get("eval_csv"):
        eval_files, _, more = _prepare_csv(dc["eval_csv"], request.workdir, f"{request.name}-eval", dc,
                                           request.classes, modalities)
        skipped = skipped + more
    return DataSpec(request.name, source, eval_files=eval_files, eval_configs=dc, skipped=skipped,
                    modalities=modalities)


def _array_classes(request: DatasetRequest) -> dict[str, int]:
    from mtv.data.sources import Source

    if isinstance(request.arrays, Source):
        return dict(request.arrays.classes)
    return classes_from_configs(request.dataset_configs)


@register_dataset("arrays", classes=_array_classes)
def build_array_dataset(request: DatasetRequest) -> DataSpec:
    """In-memory clips: `arrays` = (uint8 clips [N, T, H, W, 3], labels int [N] or {label: int [N]}); for a
    model with several streams, clips is a dict {'rgb': uint8 [N, T, H, W, 3], 'flow': float [N, T, H, W, 2],
    'audio': float [N, F, M, 1]} (`mtv.data.streams.stream_array_source`)."""
    from mtv.data.sources import Source, array_source
    from mtv.data.streams import stream_array_source

    if request.arrays is None:
        raise ConfigError("dataset 'arrays' is in-memory data: pass train_data=(clips, labels) to "
                          "mtv.training.trainer.train")
    first = next(iter(request.classes))
    if isinstance(request.arrays, Source):
        source = request.arrays
    else:
        clips, labels = request.arrays
        labels = labels if isinstance(labels, Mapping) else {first: labels}
        if isinstance(clips, Mapping):
            source = stream_array_source(clips, labels, request.classes, name=request.name)
        else:
            source = array_source(clips, labels, request.classes, name=request.name,
                                  random_flip=bool(request.dataset_configs.get("random_flip", False)))
    eval_arrays = None
    if request.eval_arrays is not None:
        clips, labels = request.eval_arrays
        eval_arrays = (clips, labels if isinstance(labels, Mapping) else {first: labels})
    return DataSpec(request.name, source, eval_arrays=eval_arrays, held_out="the given eval_data")


def _prepare_csv(csv_path: str, workdir: Path, split: str, dataset_configs: Mapping,
                 classes: Mapping[str, int], modalities: tuple[str, ...] = ("rgb",)) -> tuple[list[str], int, list]:
    """Converts a CSV into TFRecords under `<workdir>/data/` once (with the audio and flow the model
    takes); returns (files, examples, skipped)."""
    from mtv.data import prepare as prepare_lib

    out = workdir / "data"
    done = out / f"{split}-done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("csv") == str(csv_path) and set(info.get("modalities", ["rgb"])) >= set(modalities):
            return info["files"], info["num_examples"], info["skipped"]
    for head, count in classes.items():
        if head != "label" and prepare_lib.EPIC_NUM_CLASSES.get(head, count) != count:
            raise ConfigError(f"head '{head}' has {count} classes but the CSV's Epic labels have "
                              f"{prepare_lib.EPIC_NUM_CLASSES[head]}")
    result = prepare_lib.prepare(csv_path, out, name=split, num_classes=classes.get("label"),
                                 video_root=dataset_configs.get("video_root"),
                                 min_resize=int(dataset_configs.get("min_resize", 256)), progress=False,
                                 with_audio="audio" in modalities, with_flow="flow" in modalities)
    info = {"csv": str(csv_path), "files": [str(p) for p in result.shards], "num_examples": result.num_written,
            "skipped": [list(s) for s in result.skipped], "modalities": list(modalities)}
    done.write_text(json.dumps(info, indent=1))
    return info["files"], info["num_examples"], info["skipped"]


def _files_or_none(pattern: str) -> list[str] | None:
    from absl import logging

    from mtv.data import tfrecord

    try:
        return tfrecord.resolve_files(pattern)
    except DataError as e:
        logging.warning("no validation data: %s", e)
        return None
