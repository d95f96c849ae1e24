"""Score fusion: align results by id, weighted fusion, and a weight search on validation.

Several models' results and one model's test-time views (e.g. clips x crops saved as separate files)
go through the same `fuse`. A team searches the weights on validation with `search_weights`, then fuses
the test results with those weights and writes the challenge submission (`mtv.epic.scoring.make_submission`).

Fusion modes:
- 'logits': weighted mean of raw scores (probabilities inputs enter as log-probabilities), i.e. a
  weighted geometric mean of the models' probabilities; the result has score_kind 'logits'.
- 'probabilities': weighted mean of softmax probabilities; the result has score_kind 'probabilities'.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

import numpy as np

from mtv.epic.results import Results
from mtv.epic.scoring import EpicScorer, raw_scores
from mtv.errors import ResultsError
from mtv.utils.numeric import to_probabilities, topk_accuracy

FUSE_MODES = ("logits", "probabilities")
SEARCH_METHODS = ("grid", "coordinate")
GENERIC_METRICS = ("accuracy_at_1", "accuracy_at_5")
_SHOW = 5


def _name(results: Results, i: int) -> str:
    return results.source or f"results #{i + 1}"


def align(results_list: Sequence[Results]) -> list[Results]:
    """Reorders every results set to the first one's id order; different id sets are an error."""
    if not results_list:
        raise ResultsError("no results to align")
    ref = results_list[0]
    id_sets = [set(r.ids.tolist()) for r in results_list]
    union = set().union(*id_sets)
    if any(len(s) != len(union) for s in id_sets):
        lines = []
        for i, (r, s) in enumerate(zip(results_list, id_sets, strict=True)):
            missing = sorted(union - s)
            if missing:
                shown = ", ".join(repr(m) for m in missing[:_SHOW])
                more = f", ... ({len(missing)} in all)" if len(missing) > _SHOW else ""
                lines.append(f"  {_name(r, i)} lacks {shown}{more}")
        header = "results files cover different ids; every file needs the same ids:\n"
        raise ResultsError(header + "\n".join(lines))
    position = {nid: n for n, nid in enumerate(ref.ids)}
    out = [ref]
    for r in results_list[1:]:
        order = np.empty(len(r), dtype=np.int64)
        order[[position[nid] for nid in r.ids]] = np.arange(len(r))
        out.append(r.take(order))
    return out


def _check_heads(results_list: Sequence[Results]) -> None:
    ref = results_list[0]
    shapes = {h: v.shape[1] for h, v in ref.outputs.items()}
    for i, r in enumerate(results_list[1:], start=1):
        other = {h: v.shape[1] for h, v in r.outputs.items()}
        if other != shapes:
            raise ResultsError(
                f"{_name(r, i)} has heads {other} (head: classes) but {_name(ref, 0)} has {shapes}; "
                "fused results need the same heads and class counts"
            )


def _normalise(weights, count: int) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != count:
        raise ResultsError(f"got {len(w)} weights for {count} results files; give one weight per file")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ResultsError(f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ResultsError(f"weights sum to 0 ({w.tolist()}); at least one must be positive")
    return w / w.sum()


def _as_kind(results: Results, head: str, mode: str) -> np.ndarray:
    if mode == "logits":
        return raw_scores(results, head)
    return to_probabilities(results.outputs[head], results.score_kind)


def _check_mode(mode: str) -> None:
    if mode not in FUSE_MODES:
        raise ResultsError(f"fuse mode is {mode!r}; expected one of {FUSE_MODES}")


def _stacks(results_list: Sequence[Results], mode: str) -> dict[str, np.ndarray]:
    """Per head, the inputs in fusion space stacked as [models, N, classes]."""
    return {h: np.stack([_as_kind(r, h, mode) for r in results_list]) for h in results_list[0].heads}


def _combine(stacks: dict[str, np.ndarray], w: np.ndarray, dtype) -> dict[str, np.ndarray]:
    return {h: np.tensordot(w, s, axes=1).astype(dtype) for h, s in stacks.items()}


def fuse(results_list: Sequence[Results], weights=None, *, fuse: str = "logits") -> Results:
    """Weighted fusion of results sets (aligned by id, weights normalised to sum to 1)."""
    _check_mode(fuse)
    aligned = align(results_list)
    _check_heads(aligned)
    w = _normalise(weights, len(aligned))
    dtype = np.result_type(*[v.dtype for r in aligned for v in r.outputs.values()])
    outputs = _combine(_stacks(aligned, fuse), w, dtype)
    return Results(ids=aligned[0].ids, outputs=outputs, score_kind=fuse)


# ----------------------------------------------------------------------------- weight search


def _simplex(models: int, steps: int) -> list[np.ndarray]:
    """All weight vectors with entries k/steps summing to 1."""
    points = []
    for cuts in itertools.combinations(range(steps + models - 1), models - 1):
        edges = (-1, *cuts, steps + models - 1)
        points.append(np.array([edges[i + 1] - edges[i] - 1 for i in range(models)], float) / steps)
    return points


def _grid_points(models: int, grid) -> list[np.ndarray]:
    if isinstance(grid, int | np.integer):
        if grid < 1:
            raise ResultsError(f"grid must be >= 1 steps, got {grid}")
        return _simplex(models, int(grid))
    values = sorted({float(v) for v in grid})
    if not values or values[0] < 0:
        raise ResultsError(f"grid values must be >= 0, got {list(grid)}")
    seen, points = set(), []
    for combo in itertools.product(values, repeat=models):
        w = np.array(combo)
        if w.sum() <= 0:
            continue
        key = tuple(np.round(w / w.sum(), 9))
        if key not in seen:
            seen.add(key)
            points.append(w / w.sum())
    return points


def _coordinate_values(grid) -> list[float]:
    if isinstance(grid, int | np.integer):
        return list(np.linspace(0.0, 1.0, int(grid) + 1))
    return sorted({float(v) for v in grid})


def _generic_scorer(results_list: Sequence[Results], labels) -> Callable[[dict[str, np.ndarray]], dict]:
    ref = results_list[0]
    if len(ref.heads) != 1:
        raise ResultsError(
            f"search with labels needs single-head results; {_name(ref, 0)} has heads {ref.heads}"
        )
    head = ref.heads[0]
    labels = np.asarray(labels)
    classes = ref.outputs[head].shape[1]
    if labels.shape != (len(ref),) or labels.dtype.kind not in "iu":
        raise ResultsError(
            f"labels must be {len(ref)} integer class ids in the order of {_name(ref, 0)}'s ids, "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise ResultsError(f"labels must be in 0..{classes - 1}, found {labels.min()}..{labels.max()}")

    def score(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {f"accuracy_at_{k}": topk_accuracy(outputs[head], labels, k) for k in (1, 5)}

    return score


def _epic_scorer(results_list: Sequence[Results], annotations_csv, mode: str, **csvs) -> Callable:
    scorer = EpicScorer.from_csv(annotations_csv, **csvs)
    ref = results_list[0]
    labels = scorer.labels_for(ref)

    def score(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return scorer.metrics(Results(ids=ref.ids, outputs=outputs, score_kind=mode), labels)

    return score


def search_weights(
    results_list: Sequence[Results],
    annotations_csv: str | os.PathLike | None = None,
    *,
    labels=None,
    method: str = "grid",
    metric: str | None = None,
    grid: int | Sequence[float] = 10,
    fuse: str = "logits",
    max_rounds: int = 10,
    tail_verb_classes_csv: str | os.PathLike | None = None,
    tail_noun_classes_csv: str | os.PathLike | None = None,
    unseen_participant_ids_csv: str | os.PathLike | None = None,
) -> tuple[np.ndarray, float]:
    """Finds fusion weights maximising a validation metric; returns (normalised weights, score).

    With `annotations_csv` the metric is an Epic-Kitchens one (default 'all_action_accuracy_at_1').
    With `labels` (class ids in the first file's id order) the results must be single-head and the metric
    is 'accuracy_at_1' (default) or 'accuracy_at_5'. `grid` is a number of steps (weights k/steps on the
    simplex for 'grid'; candidate values 0..1 per weight for 'coordinate') or explicit candidate values.
    Earlier candidates win ties, so the search is deterministic.
    """
    _check_mode(fuse)
    if method not in SEARCH_METHODS:
        raise ResultsError(f"search method is {method!r}; expected one of {SEARCH_METHODS}")
    if (annotations_csv is None) == (labels is None):
        raise ResultsError("search_weights needs exactly one of annotations_csv (Epic-Kitchens) or labels")
    aligned = align(results_list)
    _check_heads(aligned)
    if labels is not None:
        metric = metric or "accuracy_at_1"
        scorer = _generic_scorer(aligned, labels)
    else:
        metric = metric or "all_action_accuracy_at_1"
        scorer = _epic_scorer(
            aligned,
            annotations_csv,
            fuse,
            tail_verb_classes_csv=tail_verb_classes_csv,
            tail_noun_classes_csv=tail_noun_classes_csv,
            unseen_participant_ids_csv=unseen_participant_ids_csv,
        )
    stacks = _stacks(aligned, fuse)

    def evaluate(w: np.ndarray) -> float:
        values = scorer(_combine(stacks, w / w.sum(), np.float64))
        if metric not in values:
            raise ResultsError(f"unknown metric {metric!r}; available: {sorted(values)}")
        return values[metric]

    models = len(aligned)
    if models == 1:
        w = np.ones(1)
        return w, evaluate(w)
    if method == "grid":
        best_w, best = None, -np.inf
        for w in _grid_points(models, grid):
            s = evaluate(w)
            if s > best:
                best_w, best = w, s
        return best_w / best_w.sum(), float(best)
    values = _coordinate_values(grid)
    w = np.full(models, 1.0 / models)
    best = evaluate(w)
    for _ in range(max_rounds):
        improved = False
        for i in range(models):
            for v in values:
                trial = w.copy()
                trial[i] = v
                if trial.sum() <= 0:
                    continue
                s = evaluate(trial)
                if s > best + 1e-12:
                    w, best, improved = trial, s, True
        if not improved:
            break
    return w / w.sum(), float(best)
