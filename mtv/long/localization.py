"""UnLoc-style single-stage temporal localization on MTV features (Yan et al. ICCV 2023; Scenic projects/unloc).

Per-step features [B, T, D] (one per time step of each window: `mtv.long.features.step_features`) feed a
temporal feature pyramid; every step of every level predicts class relevancy logits [C] and its distances
to the segment's start and end. The pieces:

- Pyramid: level 0 is the projected input; level l+1 is level l max-pooled by 2 (kernel 2, stride 2,
  'valid'), so step j of level l covers base steps [j 2^l, (j+1) 2^l) exactly: centre time
  t = (j + 1/2) 2^l dt, length L_l = 2^l dt (dt = base step, seconds). T_l = T // 2^l (a tail of fewer than
  2^l steps has no step at level l). Each level then gets a conv block (Conv1D k, LayerNorm, ReLU).
- Heads, shared by all levels (as UnLoc/ActionFormer): a conv tower -> C logits, and a conv tower ->
  2 distances times a learned per-level scale, through ReLU (non-negative), in units of L_l.
- Assignment (targets from segments (start, end, label) in seconds): a (step, segment) pair is positive when
  the step's centre lies in the segment, start <= t <= end, and the farther boundary in level units,
  max(t - start, end - t) / L_l, is in the level's regression range [lo_l, hi_l). Default ranges:
  level 0 [0, 4), middle levels [2, 4), the last [2, inf) (one level for 1 level: [0, inf)) - short
  segments go to fine levels, long ones to coarse. A step's class target is multi-hot over its positive
  segments; its distance target is ((t - start) / L_l, (end - t) / L_l) of the shortest of them.
- Loss: sigmoid focal loss (alpha 0.25, gamma 2) over every valid step and class, plus
  `regression_weight` x (1 - tIoU) of predicted vs target distances on positive steps; both divided by the
  number of positive steps (at least 1).
- Decoding: score = sigmoid(logit) per (step, class); candidates over `score_threshold`, the best
  `pre_nms_top_k`, as [t - d_s L_l, t + d_e L_l] clipped to [0, duration]; then per-class NMS or Gaussian
  soft-NMS and the top k (`mtv.eval.localization_metrics.postprocess`).

`LocalizationModel` = an MTV backbone applied per window -> per-step features -> `UnLocHead`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from mtv.errors import ConfigError, DataError, ShapeError
from mtv.eval.localization_metrics import postprocess
from mtv.layers.common import LN_EPSILON
from mtv.long.features import step_features, steps_per_clip

POOL = 2  # each pyramid level halves the time resolution
PRIOR = 0.01  # initial foreground probability of the class logits (the focal-loss bias init)


# ----------------------------------------------------------------------------------------- geometry
def pyramid_lengths(num_steps: int, num_levels: int) -> list[int]:
    """Steps per level: T // 2^l for l < num_levels (ShapeError when a level would be empty)."""
    if num_levels < 1:
        raise ConfigError(f"num_levels must be >= 1, got {num_levels}")
    lengths = [int(num_steps) // POOL ** level for level in range(num_levels)]
    if lengths[-1] < 1:
        raise ShapeError(f"{num_steps} time steps are too few for {num_levels} pyramid levels (level "
                         f"{num_levels - 1} needs at least {POOL ** (num_levels - 1)} steps); use a longer "
                         "sequence or fewer levels")
    return lengths


def step_geometry(num_steps: int, step_seconds: float, num_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pyramid step's centre time, length (seconds) and level, levels concatenated: 3 x [sum T_l]."""
    times, lengths, levels = [], [], []
    for level, count in enumerate(pyramid_lengths(num_steps, num_levels)):
        length = step_seconds * POOL ** level
        times.append((np.arange(count) + 0.5) * length)
        lengths.append(np.full(count, length))
        levels.append(np.full(count, level))
    return np.concatenate(times), np.concatenate(lengths), np.concatenate(levels)


def default_regression_ranges(num_levels: int) -> list[tuple[float, float]]:
    """[lo, hi) of max(t - start, end - t) per level, in units of that level's step (see the module)."""
    if num_levels == 1:
        return [(0.0, math.inf)]
    return [(0.0 if level == 0 else 2.0, math.inf if level == num_levels - 1 else 4.0) for level in range(num_levels)]


def _label_index(label, class_names: Sequence[str] | None, num_classes: int, where: str) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < num_classes:
            raise DataError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        return int(label)
    if class_names is None or label not in class_names:
        known = ", ".join(class_names) if class_names else f"integers 0..{num_classes - 1}"
        raise DataError(f"{where}: unknown label {label!r}; known labels: {known}")
    return list(class_names).index(label)


def build_targets(segments: Sequence, *, num_steps: int, step_seconds: float, num_levels: int,
                  num_classes: int | None = None, class_names: Sequence[str] | None = None,
                  regression_ranges: Sequence[tuple[float, float]] | None = None,
                  duration: float | None = None) -> dict[str, np.ndarray]:
    """Per-step targets of one sequence from its segments (start, end, label) in seconds (see the module's rule).

    Returns float32 arrays over the concatenated pyramid steps: `classes` [S, C] (multi-hot), `distances`
    [S, 2] (level-step units), `positive` [S] and `valid` [S] (step centre inside `duration`, if given).
    """
    if class_names is not None:
        num_classes = len(class_names)
    if not num_classes:
        raise ConfigError("build_targets needs num_classes or class_names")
    ranges = list(regression_ranges) if regression_ranges is not None else default_regression_ranges(num_levels)
    if len(ranges) != num_levels:
        raise ConfigError(f"regression_ranges has {len(ranges)} entries for {num_levels} pyramid levels")
    times, lengths, levels = step_geometry(num_steps, step_seconds, num_levels)
    total = num_steps * step_seconds if duration is None else float(duration)
    rows = []
    for i, segment in enumerate(segments):
        if len(segment) != 3:
            raise DataError(f"segment {i} must be (start, end, label), got {tuple(segment)!r}")
        start, end = float(segment[0]), float(segment[1])
        if not start < end:
            raise DataError(f"segment {i} {tuple(segment)!r}: start {start} >= end {end}")
        if start < 0 or end > total + 1e-6:
            raise DataError(f"segment {i} {tuple(segment)!r} lies outside the sequence [0, {total:g}] s")
        rows.append((start, end, _label_index(segment[2], class_names, num_classes, f"segment {i}")))
    count = len(times)
    classes = np.zeros((count, num_classes), np.float32)
    distances = np.zeros((count, 2), np.float32)
    positive = np.zeros(count, np.float32)
    best = np.full(count, np.inf)  # length of the segment that set each step's distances
    lo = np.asarray([ranges[level][0] for level in levels])
    hi = np.asarray([ranges[level][1] for level in levels])
    for start, end, label in rows:
        far = np.maximum(times - start, end - times) / lengths
        hit = (times >= start) & (times <= end) & (far >= lo) & (far < hi)
        classes[hit, label] = 1.0
        shorter = hit & (end - start < best)
        distances[shorter, 0] = (times[shorter] - start) / lengths[shorter]
        distances[shorter, 1] = (end - times[shorter]) / lengths[shorter]
        best[shorter] = end - start
        positive[hit] = 1.0
    return {"classes": classes, "distances": distances, "positive": positive,
            "valid": (times < total).astype(np.float32)}


# ---------------------------------------------------------------------------------------------- loss
def sigmoid_focal_loss(labels, logits, alpha: float = 0.25, gamma: float = 2.0):
    """Elementwise focal loss of sigmoid logits (Lin et al. 2017), numerically stable."""
    p = ops.sigmoid(logits)
    ce = ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = p * labels + (1.0 - p) * (1.0 - labels)
    alpha_t = alpha * labels + (1.0 - alpha) * (1.0 - labels)
    return alpha_t * ops.power(1.0 - p_t, gamma) * ce


def distance_iou(predicted, target):
    """tIoU of two segments given as (distance to start, distance to end) from the same step centre: [...]."""
    inter = ops.minimum(predicted[..., 0], target[..., 0]) + ops.minimum(predicted[..., 1], target[..., 1])
    union = ops.maximum(predicted[..., 0], target[..., 0]) + ops.maximum(predicted[..., 1], target[..., 1])
    return inter / ops.maximum(union, 1e-6)


def localization_loss(targets: Mapping, outputs: Mapping, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                      regression_weight: float = 1.0) -> dict:
    """{'loss', 'classification', 'regression'} of batched outputs against `build_targets` targets (stacked)."""
    logits = ops.cast(outputs["logits"], "float32")
    distances = ops.cast(outputs["distances"], "float32")
    positive = ops.cast(targets["positive"], "float32")
    valid = ops.cast(targets["valid"], "float32")
    count = ops.maximum(ops.sum(positive), 1.0)
    focal = sigmoid_focal_loss(ops.cast(targets["classes"], "float32"), logits, focal_alpha, focal_gamma)
    classification = ops.sum(focal * valid[..., None]) / count
    iou = distance_iou(distances, ops.cast(targets["distances"], "float32"))
    regression = ops.sum((1.0 - iou) * positive) / count
    return {"loss": classification + regression_weight * regression, "classification": classification,
            "regression": regression}


# -------------------------------------------------------------------------------------------- layers
def _conv_block(width: int, kernel_size: int, name: str) -> list:
    return [keras.layers.Conv1D(width, kernel_size, padding="same", name=f"{name}_conv"),
            keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_norm")]


def _apply_block(block: list, x):
    return ops.relu(block[1](block[0](x)))


@keras.saving.register_keras_serializable(package="mtv")
class UnLocHead(keras.Model):
    """Per-step features [B, T, D] -> {'logits': [B, S, C], 'distances': [B, S, 2]} over all pyramid steps.

    Levels are concatenated along S in order (level 0's T steps first); `step_geometry(T, dt, num_levels)`
    gives each one's time and length. `compute_loss` is `localization_loss`, so `fit(features, targets)` trains it.
    """

    def __init__(self, num_classes: int, width: int = 64, num_levels: int = 3, num_conv_layers: int = 2,
                 kernel_size: int = 3, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 regression_weight: float = 1.0, **kwargs):
        kwargs.setdefault("name", "unloc_head")
        super().__init__(**kwargs)
        for field, value in (("num_classes", num_classes), ("width", width), ("num_levels", num_levels),
                             ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"localization {field} must be a positive integer, got {value!r}")
        self.settings = {"num_classes": num_classes, "width": width, "num_levels": num_levels,
                         "num_conv_layers": int(num_conv_layers), "kernel_size": kernel_size,
                         "focal_alpha": float(focal_alpha), "focal_gamma": float(focal_gamma),
                         "regression_weight": float(regression_weight)}
        self.input_projection = keras.layers.Dense(width, name="input_projection")
        self.levels = [_conv_block(width, kernel_size, f"level{i}") for i in range(num_levels)]
        self.tracked_levels = [layer for block in self.levels for layer in block]
        self.class_tower = [_conv_block(width, kernel_size, f"class_tower{i}") for i in range(num_conv_layers)]
        self.box_tower = [_conv_block(width, kernel_size, f"distance_tower{i}") for i in range(num_conv_layers)]
        self.tracked_towers = [layer for block in self.class_tower + self.box_tower for layer in block]
        self.class_output = keras.layers.Dense(
            num_classes, bias_initializer=keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)),
            name="class_output")
        self.distance_output = keras.layers.Dense(2, name="distance_output")

    def build(self, input_shape):
        width = self.settings["width"]
        self.input_projection.build(tuple(input_shape))
        for block in self.levels + self.class_tower + self.box_tower:
            block[0].build((None, None, width))
            block[1].build((None, None, width))
        self.class_output.build((None, None, width))
        self.distance_output.build((None, None, width))
        self.level_scales = self.add_weight(name="level_scales", shape=(self.settings["num_levels"],),
                                            initializer="ones")
        self.built = True

    def call(self, features, training=False):
        if len(features.shape) != 3:
            raise ShapeError(f"the localization head takes per-step features [B, T, D]; got shape {features.shape}")
        pyramid_lengths(int(features.shape[1]), self.settings["num_levels"])
        x = self.input_projection(features)
        logits, distances = [], []
        for level, block in enumerate(self.levels):
            if level:
                x = ops.max_pool(x, POOL, POOL, padding="valid")
            x = _apply_block(block, x)
            c = x
            for tower in self.class_tower:
                c = _apply_block(tower, c)
            d = x
            for tower in self.box_tower:
                d = _apply_block(tower, d)
            logits.append(self.class_output(c))
            distances.append(ops.relu(self.distance_output(d) * self.level_scales[level]))
        return {"logits": ops.cast(ops.concatenate(logits, axis=1), "float32"),
                "distances": ops.cast(ops.concatenate(distances, axis=1), "float32")}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        s = self.settings
        return localization_loss(y, y_pred, focal_alpha=s["focal_alpha"], focal_gamma=s["focal_gamma"],
                                 regression_weight=s["regression_weight"])["loss"]

    def get_config(self):
        return {"name": self.name, **self.settings}


# ------------------------------------------------------------------------------------------ decoding
def decode_segments(logits, distances, *, num_steps: int, step_seconds: float, num_levels: int,
                    class_names: Sequence[str] | None = None, duration: float | None = None,
                    score_threshold: float = 0.05, pre_nms_top_k: int = 1000, method: str = "soft_nms",
                    iou_threshold: float = 0.5, sigma: float = 0.5, top_k: int | None = 100) -> list[tuple]:
    """One sequence's head outputs (logits [S, C], distances [S, 2]) -> [(start, end, label, score)], best first.

    Labels are class names when `class_names` is given, else class indices.
    """
    logits, distances = np.asarray(logits, np.float64), np.asarray(distances, np.float64)
    times, lengths, _ = step_geometry(num_steps, step_seconds, num_levels)
    if logits.ndim != 2 or logits.shape[0] != len(times) or distances.shape != (len(times), 2):
        raise ShapeError(f"expected logits [{len(times)}, C] and distances [{len(times)}, 2] for {num_steps} steps "
                         f"and {num_levels} levels; got {logits.shape} and {distances.shape}")
    scores = 1.0 / (1.0 + np.exp(-logits))
    step_idx, label_idx = np.nonzero(scores > score_threshold)
    cand = scores[step_idx, label_idx]
    keep = np.argsort(-cand, kind="stable")[:pre_nms_top_k]
    step_idx, label_idx, cand = step_idx[keep], label_idx[keep], cand[keep]
    end_time = num_steps * step_seconds if duration is None else float(duration)
    starts = np.clip(times[step_idx] - distances[step_idx, 0] * lengths[step_idx], 0.0, end_time)
    ends = np.clip(times[step_idx] + distances[step_idx, 1] * lengths[step_idx], 0.0, end_time)
    ok = ends > starts  # a zero-length prediction is no segment
    segs, kept_scores, labels = postprocess(np.stack([starts[ok], ends[ok]], axis=1), cand[ok], label_idx[ok],
                                            score_threshold=score_threshold, method=method,
                                            iou_threshold=iou_threshold, sigma=sigma, top_k=top_k)
    return [(float(s), float(e), class_names[int(c)] if class_names is not None else int(c), float(p))
            for (s, e), p, c in zip(segs, kept_scores, labels, strict=True)]


# ------------------------------------------------------------------------------------- the full model
@keras.saving.register_keras_serializable(package="mtv")
class LocalizationModel(keras.Model):
    """MTV backbone per window -> per-step features -> `UnLocHead`.

    Input: windows [B, W, *clip] (a dict of them for M&M): W consecutive, non-overlapping windows of one
    video. The head sees T = W x `steps_per_window` steps; step i covers window frames [i T_w/S_w, ...).
    """

    def __init__(self, backbone, head: UnLocHead, **kwargs):
        kwargs.setdefault("name", "mtv_localizer")
        super().__init__(**kwargs)
        self.backbone, self.head = backbone, head
        self.steps_per_window = steps_per_clip(backbone)
        if not self.head.built:  # a deserialised head arrives built
            self.head.build((None, None, backbone.output_width))
        self.built = True

    @property
    def input_shapes(self) -> dict[str, tuple]:
        """One window's inputs without the batch axis (the backbone's)."""
        return self.backbone.input_shapes

    def step_seconds(self, fps: float) -> float:
        """The duration of one base step at `fps` frames per second."""
        frames = next(iter(self.input_shapes.values()))[0]
        return frames / float(fps) / self.steps_per_window

    def features(self, windows, training=False):
        """Per-step features [B, W x steps_per_window, D] of windows [B, W, *clip]."""
        first = next(iter(windows.values())) if isinstance(windows, Mapping) else windows
        if len(first.shape) < 3 or first.shape[1] is None:
            raise ShapeError(f"windows are [B, W, *clip] with a static number of windows W; got {first.shape}")
        batch, count = ops.shape(first)[0], int(first.shape[1])

        def merge(x):
            return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

        merged = {k: merge(v) for k, v in windows.items()} if isinstance(windows, Mapping) else merge(windows)
        x = step_features(self.backbone, merged, training=training)
        return ops.reshape(x, (batch, count * self.steps_per_window, x.shape[-1]))

    def call(self, windows, training=False):
        return self.head(self.features(windows, training=training), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.head.compute_loss(x, y, y_pred, sample_weight, training)

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone),
                "head": keras.saving.serialize_keras_object(self.head)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        head = keras.saving.deserialize_keras_object(config.pop("head"))
        return cls(backbone, head, **config)


HEAD_FIELDS = ("width", "num_levels", "num_conv_layers", "kernel_size", "focal_alpha", "focal_gamma",
               "regression_weight")
POSTPROCESS_FIELDS = ("score_threshold", "pre_nms_top_k", "method", "iou_threshold", "sigma", "top_k")
SECTION_FIELDS = set(HEAD_FIELDS) | {"regression_ranges", "windows_per_sequence", "postprocess"}


def localization_section(config) -> dict:
    """`config.model.localization` as a checked plain dict (ConfigError names an unknown field)."""
    from mtv.models.spec import check_fields, to_plain

    section = to_plain((config.get("model") or {}).get("localization"))
    if not isinstance(section, Mapping):
        raise ConfigError("a localization config needs a 'model.localization' section (head, targets, "
                          "post-processing); see configs/localization/")
    check_fields(section, SECTION_FIELDS, "model.localization")
    check_fields(section.get("postprocess") or {}, set(POSTPROCESS_FIELDS), "model.localization.postprocess")
    return dict(section)


def build_localization_model(config, *, num_classes: int | None = None, seed: int | None = None
                             ) -> LocalizationModel:
    """A randomly initialised `LocalizationModel` from a config with a `model.localization` section."""
    from mtv.models.mtv_classifier import backbone_class
    from mtv.models.spec import read_config, spec_from_config, to_plain

    plain = to_plain(read_config(config))
    section = localization_section(plain)
    backbone_config = copy.deepcopy(plain)
    backbone_config["model"].pop("localization")
    spec = spec_from_config(backbone_config, num_classes=num_classes)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    backbone = backbone_class(spec)(spec)
    head = UnLocHead(spec["num_classes"], **{k: section[k] for k in HEAD_FIELDS if k in section})
    return LocalizationModel(backbone, head)
