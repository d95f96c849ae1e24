"""Score arithmetic shared by evaluation, prediction, Epic scoring and ensembling: softmax, top-k, view averaging.

View rules (how the per-view logits of one video become its scores):
  'logits_mean'   mean of the views' logits (Scenic's `test_step`); the scores are logits
  'softmax_mean'  mean of the views' softmax probabilities; the scores are probabilities
"""

from __future__ import annotations

import numpy as np

from mtv.errors import ConfigError

VIEW_RULES = ("logits_mean", "softmax_mean")
SCORE_KINDS = ("logits", "probabilities")
_ARGMAX_PASSES = 8  # up to this k, k argmax passes beat a partition and are immune to tied scores


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in float64."""
    x = np.asarray(x, np.float64)
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def to_probabilities(scores, score_kind: str) -> np.ndarray:
    """Scores of a kind ('logits' or 'probabilities') as float64 probabilities."""
    if score_kind not in SCORE_KINDS:
        raise ConfigError(f"score kind is {score_kind!r}; expected one of {SCORE_KINDS}")
    return softmax(scores) if score_kind == "logits" else np.asarray(scores, np.float64)


def top_k(scores, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the k highest scores along the last axis, highest first; ties: lower index first.

    The order is exactly that of a stable `argsort(-scores)`, at partition speed for large class counts.
    """
    scores = np.asarray(scores)
    if scores.ndim == 0:
        raise ConfigError("top_k needs scores with a class axis, got a scalar")
    if k < 1:
        raise ConfigError(f"top_k needs k >= 1, got {k}")
    lead, classes = scores.shape[:-1], scores.shape[-1]
    rows = scores.reshape(-1, classes)
    k = min(k, classes)
    idx = _top_argmax(rows, k) if k <= _ARGMAX_PASSES else _top_partition(rows, k)
    values = np.take_along_axis(rows, idx, axis=1)
    return idx.reshape(*lead, k), values.reshape(*lead, k)


def _top_argmax(rows: np.ndarray, k: int) -> np.ndarray:
    work, at = rows.astype(np.float64, copy=True), np.arange(len(rows))
    idx = np.empty((len(rows), k), dtype=np.int64)
    for r in range(k):
        idx[:, r] = work.argmax(axis=1)  # argmax takes the first of tied maxima
        work[at, idx[:, r]] = -np.inf
    return idx


def _top_partition(rows: np.ndarray, k: int) -> np.ndarray:
    classes = rows.shape[1]
    if k == classes:
        return np.argsort(-rows, axis=1, kind="stable")
    # The k-th highest value is exact after a partition, but which tied indices reach the top k is not:
    # keep everything above it plus the lowest-indexed ties, then sort that set stably.
    kth = np.take_along_axis(rows, np.argpartition(-rows, k - 1, axis=1)[:, k - 1:k], axis=1)
    above, tied = rows > kth, rows == kth
    room = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
    chosen = np.nonzero(keep)[1].reshape(len(rows), k)  # ascending index within each row
    order = np.argsort(-np.take_along_axis(rows, chosen, axis=1), axis=1, kind="stable")
    return np.take_along_axis(chosen, order, axis=1)


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Percent of rows whose label is among the k highest scores (labels int [N] or one-hot [N, C])."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    top, _ = top_k(scores, k)
    return float((top == labels[:, None]).any(axis=1).mean() * 100.0)


def view_score_kind(rule: str) -> str:
    """The kind of scores a view rule produces: 'logits' or 'probabilities' (unknown rules are refused)."""
    if rule not in VIEW_RULES:
        raise ConfigError(f"unknown view-averaging rule {rule!r}; expected one of {VIEW_RULES}")
    return "logits" if rule == "logits_mean" else "probabilities"


def average_views(view_logits, rule: str = "logits_mean", axis: int = -2) -> tuple[np.ndarray, str]:
    """Per-view logits -> (scores, score kind), averaging over `axis` (views) by a named rule (module doc)."""
    kind = view_score_kind(rule)
    view_logits = np.asarray(view_logits, np.float64)
    if kind == "logits":
        return view_logits.mean(axis=axis), kind
    return softmax(view_logits).mean(axis=axis), kind
