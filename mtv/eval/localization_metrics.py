"""Temporal localization: tIoU, ActivityNet/THUMOS-style mAP at tIoU thresholds, and segment post-processing.

Definitions (ActivityNet's official `Evaluation/eval_detection.py` semantics, written from its description):

- tIoU of [s1, e1] and [s2, e2]: max(0, min(e1, e2) - max(s1, s2)) / ((e1 - s1) + (e2 - s2) - intersection).
- Matching, per class and per threshold: detections in descending score (ties: input order); each one is
  compared with that class's ground truth in its own video, in descending tIoU; it is a true positive on the
  first ground truth with tIoU >= threshold that no earlier detection took, else a false positive (also when
  its video has no ground truth of the class). Each ground truth is matched at most once.
- AP: precision p_i = TP_i / i and recall r_i = TP_i / #ground truth over the ranked list; the precision
  envelope (p made non-increasing from the right, with p = 0 past the last detection) integrated over
  recall: AP = sum over recall steps (r_i - r_{i-1}) * max_{j >= i} p_j (the VOC 2011+ interpolation).
- mAP at a threshold: the mean AP over the classes that have ground truth (a class with ground truth and
  no detection scores 0; detections of a class without ground truth count nowhere). The reported
  summary is mAP at 0.3, 0.5, 0.7 and their mean.

Post-processing of raw segments (per class): score threshold, then NMS (drop a segment whose tIoU with a
kept higher-scored one is >= iou_threshold) or Gaussian soft-NMS (Bodla et al. 2017: repeatedly keep the
top segment and multiply every other's score by exp(-tIoU^2 / sigma), dropping those under the score
threshold), then the top k by score over all classes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from mtv.errors import DataError, ResultsError

THRESHOLDS = (0.3, 0.5, 0.7)
POSTPROCESS_METHODS = ("nms", "soft_nms", "none")


# ----------------------------------------------------------------------------------------------- tIoU
def _segments_array(segments, what: str, error=DataError) -> np.ndarray:
    array = np.asarray(segments, np.float64).reshape(-1, 2) if len(segments) else np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2 or not np.all(np.isfinite(array)):
        raise error(f"{what} must be finite (start, end) pairs, got shape {np.shape(segments)}")
    bad = np.flatnonzero(array[:, 0] >= array[:, 1])
    if bad.size:
        i = int(bad[0])
        raise error(f"{what}[{i}] has start {array[i, 0]} >= end {array[i, 1]}; a segment needs start < end")
    return array


def temporal_iou(segment: Sequence[float], segments) -> np.ndarray:
    """tIoU of one (start, end) with each of `segments` [N, 2]: [N]."""
    return pairwise_temporal_iou(np.asarray([segment], np.float64), segments)[0]


def pairwise_temporal_iou(a, b) -> np.ndarray:
    """tIoU of every segment of `a` [N, 2] with every segment of `b` [M, 2]: [N, M]."""
    a = _segments_array(a, "segments a")
    b = _segments_array(b, "segments b")
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return inter / union


# ------------------------------------------------------------------------------------------------- AP
def interpolated_average_precision(precision, recall) -> float:
    """Area under the precision envelope over recall (see the module docstring)."""
    p = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    r = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def _match(detections: list, truth: Mapping[Hashable, np.ndarray], thresholds) -> np.ndarray:
    """TP flags [len(thresholds), len(detections)] of score-sorted detections (video, start, end, score)."""
    tp = np.zeros((len(thresholds), len(detections)))
    taken = {video: np.zeros((len(thresholds), len(gt)), bool) for video, gt in truth.items()}
    for i, (video, start, end, _) in enumerate(detections):
        gt = truth.get(video)
        if gt is None or not len(gt):
            continue
        ious = temporal_iou((start, end), gt)
        order = np.argsort(-ious, kind="stable")
        for t, threshold in enumerate(thresholds):
            for j in order:
                if ious[j] < threshold:
                    break
                if not taken[video][t, j]:
                    taken[video][t, j] = True
                    tp[t, i] = 1
                    break
    return tp


def average_precision(ground_truth: Mapping[Hashable, Sequence], detections: Sequence,
                      thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """AP of one class at each threshold: [len(thresholds)].

    `ground_truth`: video -> [(start, end), ...] of this class; `detections`: [(video, start, end, score), ...].
    """
    truth = {v: _segments_array(list(s), f"ground truth of video {v!r}") for v, s in ground_truth.items()}
    positives = sum(len(s) for s in truth.values())
    if positives == 0:
        raise DataError("average_precision needs at least one ground-truth segment of the class")
    dets = [tuple(d) for d in detections]
    scores = np.asarray([d[3] for d in dets], np.float64)
    dets = [dets[i] for i in np.argsort(-scores, kind="stable")]
    if not dets:
        return np.zeros(len(thresholds))
    tp = _match(dets, truth, thresholds)
    tp_cum = np.cumsum(tp, axis=1)
    precision = tp_cum / np.arange(1, len(dets) + 1)
    recall = tp_cum / positives
    return np.asarray([interpolated_average_precision(precision[t], recall[t]) for t in range(len(thresholds))])


def _check_records(records: Mapping, what: str, width: int, error) -> None:
    if not isinstance(records, Mapping):
        raise error(f"{what} must map video ids to lists of segments, got {type(records).__name__}")
    for video, rows in records.items():
        for i, row in enumerate(rows):
            if len(row) != width:
                fields = "(start, end, label)" if width == 3 else "(start, end, label, score)"
                raise error(f"{what}[{video!r}][{i}] must be {fields}, got {tuple(row)!r}")
            start, end = float(row[0]), float(row[1])
            if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
                raise error(f"{what}[{video!r}][{i}] has start {row[0]} and end {row[1]}; a segment needs "
                            "finite start < end")
            if width == 4 and not math.isfinite(float(row[3])):
                raise error(f"{what}[{video!r}][{i}] has a non-finite score {row[3]!r}")


def mean_average_precision(ground_truth: Mapping[Hashable, Sequence], detections: Mapping[Hashable, Sequence],
                           thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """mAP of detections against ground truth, per threshold and averaged.

    `ground_truth`: video -> [(start, end, label), ...]; `detections`: video -> [(start, end, label, score),
    ...] (seconds; labels any hashable, e.g. class names). Returns {'mAP@0.3': .., 'mAP@0.5': ..,
    'mAP@0.7': .., 'mAP': mean of those, 'per_class': {label: [AP per threshold]}, 'thresholds': [...]}.
    """
    _check_records(ground_truth, "ground_truth", 3, DataError)
    _check_records(detections, "detections", 4, ResultsError)
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise DataError(f"tIoU thresholds must be in (0, 1], got {thresholds}")
    labels = sorted({row[2] for rows in ground_truth.values() for row in rows}, key=str)
    if not labels:
        raise DataError("the ground truth holds no segment; mAP is undefined")
    per_class = {}
    for label in labels:
        truth = {v: [(r[0], r[1]) for r in rows if r[2] == label] for v, rows in ground_truth.items()}
        dets = [(v, r[0], r[1], r[3]) for v, rows in detections.items() for r in rows if r[2] == label]
        per_class[label] = average_precision(truth, dets, thresholds)
    table = np.stack([per_class[label] for label in labels])  # [classes, thresholds]
    result = {f"mAP@{t:g}": float(m) for t, m in zip(thresholds, table.mean(axis=0), strict=True)}
    result["mAP"] = float(table.mean())
    result["per_class"] = {label: [float(x) for x in ap] for label, ap in per_class.items()}
    result["thresholds"] = thresholds
    return result


# ------------------------------------------------------------------------------------ post-processing
def _nms_one_class(segments: np.ndarray, scores: np.ndarray, method: str, iou_threshold: float, sigma: float,
                   score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices kept and their (possibly decayed) scores, in the order kept."""
    scores = scores.astype(np.float64).copy()
    alive = np.flatnonzero(scores >= score_threshold)
    kept, kept_scores = [], []
    while alive.size:
        best = alive[np.argmax(scores[alive])]  # argmax takes the first of equal scores: input order
        kept.append(best)
        kept_scores.append(scores[best])
        alive = alive[alive != best]
        if not alive.size:
            break
        ious = temporal_iou(segments[best], segments[alive])
        if method == "nms":
            alive = alive[ious < iou_threshold]
        else:
            scores[alive] *= np.exp(-np.square(ious) / sigma)
            alive = alive[scores[alive] >= score_threshold]
    return np.asarray(kept, np.int64), np.asarray(kept_scores, np.float64)


def postprocess(segments, scores, labels, *, score_threshold: float = 0.0, method: str = "soft_nms",
                iou_threshold: float = 0.5, sigma: float = 0.5, top_k: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class score threshold + NMS / Gaussian soft-NMS, then the top k: (segments [M, 2], scores, labels).

    `segments` [N, 2] (start < end), `scores` [N], `labels` [N] (ints). `method` is 'nms', 'soft_nms' or
    'none'; `iou_threshold` is NMS's, `sigma` soft-NMS's. The output is sorted by descending score.
    """
    if method not in POSTPROCESS_METHODS:
        raise DataError(f"post-processing method must be one of {POSTPROCESS_METHODS}, got {method!r}")
    if sigma <= 0 or not 0 < iou_threshold <= 1:
        raise DataError(f"soft-NMS sigma must be > 0 and NMS iou_threshold in (0, 1]; got {sigma}, {iou_threshold}")
    if top_k is not None and top_k < 1:
        raise DataError(f"top_k must be a positive integer or None, got {top_k!r}")
    segments = _segments_array(segments, "segments", ResultsError)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not len(scores) == len(labels) == len(segments):
        raise ResultsError(f"segments {segments.shape}, scores {scores.shape} and labels {labels.shape} must have "
                           "the same length")
    out_idx, out_scores = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if method == "none":
            keep = idx[scores[idx] >= score_threshold]
            out_idx.append(keep)
            out_scores.append(scores[keep])
            continue
        kept, kept_scores = _nms_one_class(segments[idx], scores[idx], method, iou_threshold, sigma, score_threshold)
        out_idx.append(idx[kept])
        out_scores.append(kept_scores)
    idx = np.concatenate(out_idx) if out_idx else np.zeros(0, np.int64)
    new_scores = np.concatenate(out_scores) if out_scores else np.zeros(0)
    order = np.argsort(-new_scores, kind="stable")[:top_k]
    return segments[idx[order]], new_scores[order], labels[idx[order]]
