"""The preprocessing settings of Scenic's `config.dataset_configs`, read into one typed object.

Field names and defaults follow Scenic's `video_tfrecord_dataset.get_dataset` (num_frames 32,
stride 2, min_resize 256, crop_size 224, zero_centering True, num_test_clips 1) and
`video_ops.additional_augmentations` (`augmentation_params.*`). `random_flip` is an mtv addition
(DMVR's `add_image(random_flip=...)`), for label sets with left/right classes such as SSv2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mtv.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Clip sampling, resizing, cropping and augmentation settings."""

    num_frames: int = 32
    stride: int = 2
    min_resize: int = 256
    crop_size: int = 224
    zero_centering: bool = True
    num_test_clips: int = 1
    do_three_spatial_crops: bool = False
    random_flip: bool = True
    label_offset: int = 0
    # augmentation_params.*
    do_jitter_scale: bool = False
    scale_min_factor: float = 0.9
    scale_max_factor: float = 1.33
    prob_scale_jitter: float = 1.0
    do_color_augment: bool = False
    prob_color_augment: float = 0.8
    prob_color_drop: float = 0.0
    do_rand_augment: bool = False
    rand_augment_num_layers: int = 3  # Scenic's epic_mtv_b2_cva values
    rand_augment_magnitude: int = 10

    def __post_init__(self):
        for name in ("num_frames", "stride", "min_resize", "crop_size", "num_test_clips"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"dataset_configs.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prob_scale_jitter", "prob_color_augment", "prob_color_drop"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"augmentation_params.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.scale_min_factor <= self.scale_max_factor:
            raise ConfigError(
                f"augmentation_params.scale_min_factor ({self.scale_min_factor}) must be > 0 and "
                f"<= scale_max_factor ({self.scale_max_factor})")
        if self.rand_augment_num_layers < 0 or not 0 <= self.rand_augment_magnitude <= 30:
            raise ConfigError("augmentation_params.rand_augment_num_layers must be >= 0 and "
                              f"rand_augment_magnitude in [0, 30], got {self.rand_augment_num_layers}, "
                              f"{self.rand_augment_magnitude}")

    @property
    def num_spatial_crops(self) -> int:
        """3 with do_three_spatial_crops, else 1."""
        return 3 if self.do_three_spatial_crops else 1

    @property
    def num_views(self) -> int:
        """Evaluation views per video: num_test_clips x spatial crops."""
        return self.num_test_clips * self.num_spatial_crops


_AUG_FIELDS = {f.name for f in dataclasses.fields(DataConfig)} - {
    "num_frames", "stride", "min_resize", "crop_size", "zero_centering", "num_test_clips",
    "do_three_spatial_crops", "random_flip", "label_offset"}


def _as_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(f"dataset_configs must be a ConfigDict or a dict, got {type(cfg).__name__}")


def data_config(dataset_configs: Any = None, **overrides) -> DataConfig:
    """Reads Scenic's `dataset_configs` (ConfigDict or dict); other fields in it are ignored."""
    if isinstance(dataset_configs, DataConfig):
        return dataclasses.replace(dataset_configs, **overrides)
    cfg = _as_dict(dataset_configs)
    aug = _as_dict(cfg.get("augmentation_params"))
    values = {}
    for field in dataclasses.fields(DataConfig):
        source = aug if field.name in _AUG_FIELDS else cfg
        if source.get(field.name) is not None:
            values[field.name] = source[field.name]
    values.update(overrides)
    types = {f.name: f.type for f in dataclasses.fields(DataConfig)}
    for name, value in values.items():
        kind = {"int": int, "float": float, "bool": bool}[types[name]]
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"dataset_configs field '{name}' must be True or False, got {value!r}")
        if kind is not bool:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"dataset_configs field '{name}' must be a number, got {value!r}")
            if kind is int and value != int(value):
                raise ConfigError(f"dataset_configs field '{name}' must be an integer, got {value!r}")
            values[name] = kind(value)
    return DataConfig(**values)
