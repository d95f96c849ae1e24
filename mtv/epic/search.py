"""Ensemble weight search on validation: coordinate ascent, separate weights per head, held-out folds.

Search (`search_weights`). Each head (verb, noun) has its own weight vector (`per_head=False` ties them).
Coordinate ascent: every head starts from equal weights; the best single model is tried too, so the result
is never worse than the best single model on the searched rows. Then, head by head and model by model,
the model's share of that head's weights is set to each of k/grid (k = 0..grid; the other models keep
their ratios) and the best value kept; passes repeat until one changes nothing (or `max_rounds`). A pass
costs heads x models x (grid + 1) evaluations: linear in the number of models, where a grid on the simplex
grows as models^grid. Only the moved head is rescored, and a top-1 metric needs only each head's argmax.

The objective is the metric, then (to break its ties) the sum of the verb and noun accuracies at the same
k: action top-1 needs the verb AND the noun right, so a verb weight that fixes verbs on segments whose
noun is still wrong does not move it yet; the tie-break lets such a step be taken. Among equal objectives
the earlier candidate is kept, so the search is deterministic.

Held-out protocol (`cross_validate`). A weight search fits the data it is scored on. The validation
segments are split into `folds` parts by video (every segment of one video, the narration_id without its
last `_<index>`, in the same part; parts balanced by segment count; `seed` fixes the split). Each part is
fused with weights searched on the other parts only; the metrics of these out-of-fold fusions, pooled over
all segments, are the numbers to report, next to equal weights on the same segments. The weights to apply
to the test set are then searched on every validation segment (`CrossValidation.final`); their own
in-sample score is optimistic and is not the reported number.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from mtv.epic.ensemble import align, check_heads, check_mode, combine, fused_dtype, stacks_of
from mtv.epic.results import PROBABILITY_FLOOR, Results, raw_scores
from mtv.epic.scoring import EpicScorer
from mtv.errors import ResultsError
from mtv.utils.numeric import top_k

EPIC_HEADS = ("verb", "noun")
DEFAULT_EPIC_METRIC = "all_action_accuracy_at_1"
DEFAULT_LABELS_METRIC = "accuracy_at_1"
SHARE_STEPS = 10
MAX_ROUNDS = 20
DEFAULT_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Weights found by `search_weights` and what they score on the rows they were searched on."""

    weights: dict[str, np.ndarray]  # head -> normalised weights, one per results file
    score: float  # the metric on the searched rows: fitted to them, so optimistic
    metric: str
    rounds: int  # passes over all (head, model) coordinates
    evaluations: int  # objective evaluations


@dataclasses.dataclass(frozen=True)
class Fold:
    """One held-out part: searched on the other parts, scored on this one."""

    rows: np.ndarray  # row indices, in the first results file's id order
    search: SearchResult  # searched without these rows
    held_out: dict[str, float]  # metrics of search.weights on these rows
    equal: dict[str, float]  # metrics of equal weights on these rows


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """The held-out report of a weight search, and the final weights searched on every row."""

    metric: str
    folds: list[Fold]
    held_out: Results  # every row fused with the weights searched without its fold
    held_out_metrics: dict[str, float]  # metrics of `held_out`: the numbers to report
    equal_metrics: dict[str, float]  # equal weights on the same rows: the baseline
    final: SearchResult  # searched on every row: the weights to apply to the test results

    @property
    def gain(self) -> float:
        """Held-out metric of the searched weights minus that of equal weights."""
        return self.held_out_metrics[self.metric] - self.equal_metrics[self.metric]


def _with_share(w: np.ndarray, i: int, share: float) -> tuple[np.ndarray, float, float] | None:
    """(`w` with model i's share set to `share` and the others scaled to keep their ratios, scale, add) such
    that the new weights are scale * w + add * e_i; None if that is no move."""
    if abs(w[i] - share) < 1e-12:
        return None
    rest = w.sum() - w[i]
    if rest <= 1e-12:  # model i alone: no other model's share can grow from zero this way
        return None
    scale = (1.0 - share) / rest
    trial = w * scale
    trial[i] = share
    return trial, scale, share - scale * w[i]


class _Problem:
    """Aligned results, their fusion-space stacks and a metric: evaluates weightings on subsets of rows."""

    def __init__(
        self,
        results_list: Sequence[Results],
        annotations_csv,
        labels,
        *,
        metric: str | None,
        fuse: str,
        csvs: dict,
    ):
        check_mode(fuse)
        if (annotations_csv is None) == (labels is None):
            raise ResultsError("the weight search needs exactly one of annotations_csv (Epic-Kitchens) or labels")
        aligned = align(results_list)
        check_heads(aligned)
        self.ref, self.mode, self.models = aligned[0], fuse, len(aligned)
        self.dtype = fused_dtype(aligned)
        self.epic = annotations_csv is not None
        if self.epic:
            scorer = EpicScorer.from_csv(annotations_csv, **csvs)
            # Joins the labels by id (missing/extra ids are refused), then checks the heads and class counts.
            self.labels = scorer.labels_for(self.ref)
            scorer.metrics(self.ref, self.labels)
            self.heads: tuple[str, ...] = EPIC_HEADS
            self.metric = metric or DEFAULT_EPIC_METRIC
        else:
            self.labels = self._check_labels(labels)
            self.heads = tuple(self.ref.heads)
            self.metric = metric or DEFAULT_LABELS_METRIC
        self.stacks = stacks_of(aligned, fuse)  # every head; the metric reads self.heads
        available = self.metrics(self.fuse_rows(self.equal(), None), None)
        if self.metric not in available:
            raise ResultsError(f"unknown metric {self.metric!r}; available: {sorted(available)}")
        self.k = 1 if self.metric.endswith("_at_1") else 5

    def _check_labels(self, labels) -> np.ndarray:
        ref = self.ref
        where = f"'{ref.source}'" if ref.source else "the first results"
        if len(ref.heads) != 1:
            raise ResultsError(f"a search with labels needs single-head results; {where} has heads {ref.heads}")
        labels = np.asarray(labels)
        classes = ref.outputs[ref.heads[0]].shape[1]
        if labels.shape != (len(ref),) or labels.dtype.kind not in "iu":
            raise ResultsError(
                f"labels must be {len(ref)} integer class ids in the order of {where}'s ids, "
                f"got shape {labels.shape} dtype {labels.dtype}"
            )
        if labels.min() < 0 or labels.max() >= classes:
            raise ResultsError(f"labels must be in 0..{classes - 1}, found {labels.min()}..{labels.max()}")
        return labels

    def equal(self) -> dict[str, np.ndarray]:
        """Equal weights on every head."""
        return {h: np.full(self.models, 1.0 / self.models) for h in self.ref.heads}

    def _labels(self, rows):
        if rows is None:
            return self.labels
        return self.labels.take(rows) if self.epic else self.labels[rows]

    def _stacks(self, rows) -> dict[str, np.ndarray]:
        return self.stacks if rows is None else {h: s[:, rows] for h, s in self.stacks.items()}

    def fuse_rows(self, w: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
        """Every head fused with `w` on `rows` (None: all), exactly as `fuse` stores it."""
        return {h: combine(s, w[h], self.dtype) for h, s in self._stacks(rows).items()}

    def _top(self, fused: np.ndarray, k: int):
        # Through raw_scores, exactly as the scorer reads a fused file (probabilities as log-probabilities).
        as_results = Results(ids=self.ref.ids[:0], outputs={"h": fused}, score_kind=self.mode)
        return top_k(raw_scores(as_results, "h"), k)

    def _metrics_from_tops(self, tops: dict, labels, k: int) -> dict[str, float]:
        if self.epic:
            return EpicScorer.metrics_from_tops(tops["verb"], tops["noun"], labels)
        ((idx, _),) = tops.values()
        hits = idx == labels[:, None]  # idx has min(k, classes) columns
        return {f"accuracy_at_{a}": float(hits[:, :a].any(axis=1).mean() * 100.0) for a in (1, 5) if a <= k}

    def metrics(self, fused: dict[str, np.ndarray], rows) -> dict[str, float]:
        """Every metric (top-1 and top-5) of fused scores on `rows` (None: all)."""
        return self._metrics_from_tops({h: self._top(fused[h], 5) for h in self.heads}, self._labels(rows), 5)

    def _key(self, m: dict[str, float]) -> tuple[float, float]:
        if self.metric not in m:  # a tail/unseen subset can be empty in part of the segments
            raise ResultsError(
                f"{self.metric} has no segments to score in the rows searched (e.g. one fold); "
                "use fewer --folds or another metric"
            )
        if self.epic:
            return m[self.metric], m[f"all_verb_accuracy_at_{self.k}"] + m[f"all_noun_accuracy_at_{self.k}"]
        return m[self.metric], sum(m.values())

    def _fast_top(self, fused: np.ndarray, k: int, scale: float = 1.0):
        """The search's top-k of `scale * fused` (scale > 0): the scorer's order and action scores.

        Probabilities are logged on the k kept values only (log is monotone: same order, same action scores).
        """
        if k == 1:
            idx = fused.argmax(axis=1)[:, None]  # the first of tied maxima, as top_k
            values = np.take_along_axis(fused, idx, axis=1)
        else:
            idx, values = top_k(fused, k)
        values = values * scale
        if self.mode == "probabilities":
            values = np.log(np.maximum(values, PROBABILITY_FLOOR))
        return idx, values

    def search(self, rows, *, grid: int, per_head: bool, max_rounds: int) -> SearchResult:
        """Coordinate ascent (module doc) on `rows` (None: all)."""
        labels, k, models = self._labels(rows), self.k, self.models
        # float32 results are searched in float32 (what the fused file will hold; half the memory traffic).
        work_dtype = np.promote_types(self.dtype, np.float32)
        stacks = {h: s.astype(work_dtype, copy=False) for h, s in self._stacks(rows).items() if h in self.heads}
        evaluations = 0

        def objective(tops: dict) -> tuple[float, float]:
            nonlocal evaluations
            evaluations += 1
            return self._key(self._metrics_from_tops(tops, labels, k))

        def fused_of(head: str, w: np.ndarray) -> np.ndarray:
            # Rebuilt from the stack after every accepted move, so the cheap updates never accumulate error.
            return combine(stacks[head], w, work_dtype)

        w = {h: np.full(models, 1.0 / models) for h in self.heads}
        fused = {h: fused_of(h, w[h]) for h in self.heads}
        tops = {h: self._fast_top(fused[h], k) for h in self.heads}
        best = objective(tops)
        for i in range(models if models > 1 else 0):  # each model alone, on every head
            cand = {h: self._fast_top(stacks[h][i], k) for h in self.heads}
            score = objective(cand)
            if score > best:
                w = {h: np.eye(models)[i] for h in self.heads}
                fused = {h: fused_of(h, w[h]) for h in self.heads}
                tops, best = cand, score
        groups = [(h,) for h in self.heads] if per_head else [self.heads]
        shares = np.arange(grid + 1) / grid
        trial_fused = {h: np.empty_like(fused[h]) for h in self.heads}
        rounds = 0
        while models > 1 and rounds < max_rounds:
            rounds += 1
            improved = False
            for group in groups:
                for i in range(models):
                    for share in shares:
                        move = _with_share(w[group[0]], i, share)
                        if move is None:
                            continue
                        trial, scale, add = move
                        cand = dict(tops)
                        for h in group:
                            # trial = scale * w + add * e_i, so its fusion is scale * (fused + add / scale *
                            # model i): two passes over the scores, whatever the number of models.
                            if scale > 0:
                                np.multiply(stacks[h][i], add / scale, out=trial_fused[h])
                                trial_fused[h] += fused[h]
                                cand[h] = self._fast_top(trial_fused[h], k, scale)
                            else:  # share 1: model i alone
                                cand[h] = self._fast_top(stacks[h][i], k)
                        score = objective(cand)
                        if score > best:
                            for h in group:
                                w[h] = trial
                                fused[h] = fused_of(h, trial)
                            tops, best, improved = cand, score, True
            if not improved:
                break
        # Heads the metric does not read keep equal weights, so `fuse` gets every head.
        weights = {h: w[h] / w[h].sum() if h in w else np.full(models, 1.0 / models) for h in self.ref.heads}
        # The reported score is that of the fusion `fuse` writes and the scorer reads (exact, not the search's).
        score = self.metrics(self.fuse_rows(weights, rows), rows)[self.metric]
        return SearchResult(weights=weights, score=score, metric=self.metric, rounds=rounds, evaluations=evaluations)


def _check_search_args(grid: int, max_rounds: int) -> None:
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 1:
        raise ResultsError(f"grid is {grid!r}; expected an integer >= 1 (shares k/grid are tried)")
    if max_rounds < 1:
        raise ResultsError(f"max_rounds is {max_rounds!r}; expected >= 1")


def search_weights(
    results_list: Sequence[Results],
    annotations_csv: str | os.PathLike | None = None,
    *,
    labels=None,
    metric: str | None = None,
    grid: int = SHARE_STEPS,
    fuse: str = "logits",
    per_head: bool = True,
    max_rounds: int = MAX_ROUNDS,
    tail_verb_classes_csv: str | os.PathLike | None = None,
    tail_noun_classes_csv: str | os.PathLike | None = None,
    unseen_participant_ids_csv: str | os.PathLike | None = None,
) -> SearchResult:
    """Fusion weights maximising a metric on these (validation) results, by coordinate ascent (module doc).

    With `annotations_csv` the metric is an Epic-Kitchens one (default 'all_action_accuracy_at_1') and the
    verb and noun weights are searched separately (unless `per_head=False`). With `labels` (class ids in
    the first file's id order) the results must be single-head and the metric is 'accuracy_at_1' (default)
    or 'accuracy_at_5'. The returned score is fitted to these rows; `cross_validate` gives held-out numbers.
    """
    _check_search_args(grid, max_rounds)
    csvs = {
        "tail_verb_classes_csv": tail_verb_classes_csv,
        "tail_noun_classes_csv": tail_noun_classes_csv,
        "unseen_participant_ids_csv": unseen_participant_ids_csv,
    }
    problem = _Problem(results_list, annotations_csv, labels, metric=metric, fuse=fuse, csvs=csvs)
    return problem.search(None, grid=int(grid), per_head=per_head, max_rounds=max_rounds)


def fold_rows(ids: Sequence[str], folds: int, seed: int = 0, *, by_video: bool = True) -> list[np.ndarray]:
    """Splits row indices into `folds` parts of whole videos (or single ids), balanced by row count."""
    ids = np.asarray(ids, dtype=str)
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ResultsError(f"folds is {folds!r}; expected an integer >= 2 (search on some parts, report on another)")
    groups = np.array([i.rsplit("_", 1)[0] for i in ids]) if by_video else ids
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(unique) < folds:
        what = "videos" if by_video else "ids"
        raise ResultsError(f"{folds} folds need at least {folds} {what}; the results have {len(unique)}")
    sizes = np.zeros(folds, dtype=np.int64)
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    # Groups in a seeded random order, each to the part with the fewest rows so far.
    for g in np.random.default_rng(seed).permutation(len(unique)):
        fold_of_group[g] = int(np.argmin(sizes))
        sizes[fold_of_group[g]] += counts[g]
    fold = fold_of_group[inverse]
    return [np.nonzero(fold == f)[0] for f in range(folds)]


def cross_validate(
    results_list: Sequence[Results],
    annotations_csv: str | os.PathLike | None = None,
    *,
    labels=None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    metric: str | None = None,
    grid: int = SHARE_STEPS,
    fuse: str = "logits",
    per_head: bool = True,
    max_rounds: int = MAX_ROUNDS,
    tail_verb_classes_csv: str | os.PathLike | None = None,
    tail_noun_classes_csv: str | os.PathLike | None = None,
    unseen_participant_ids_csv: str | os.PathLike | None = None,
) -> CrossValidation:
    """The held-out protocol (module doc): per-fold searches scored on their held-out part, then the final
    search on every row. `folds` parts, split with `seed`; other arguments as `search_weights`."""
    _check_search_args(grid, max_rounds)
    csvs = {
        "tail_verb_classes_csv": tail_verb_classes_csv,
        "tail_noun_classes_csv": tail_noun_classes_csv,
        "unseen_participant_ids_csv": unseen_participant_ids_csv,
    }
    problem = _Problem(results_list, annotations_csv, labels, metric=metric, fuse=fuse, csvs=csvs)
    parts = fold_rows(problem.ref.ids, folds, seed, by_video=problem.epic)
    n = len(problem.ref)
    held = {h: np.empty((n, s.shape[2]), problem.dtype) for h, s in problem.stacks.items()}
    equal = problem.equal()
    out: list[Fold] = []
    for rows in parts:
        train = np.setdiff1d(np.arange(n), rows)
        found = problem.search(train, grid=int(grid), per_head=per_head, max_rounds=max_rounds)
        fused = problem.fuse_rows(found.weights, rows)
        for h in held:
            held[h][rows] = fused[h]
        out.append(Fold(
            rows=rows,
            search=found,
            held_out=problem.metrics(fused, rows),
            equal=problem.metrics(problem.fuse_rows(equal, rows), rows),
        ))
    final = problem.search(None, grid=int(grid), per_head=per_head, max_rounds=max_rounds)
    return CrossValidation(
        metric=problem.metric,
        folds=out,
        held_out=Results(ids=problem.ref.ids, outputs=held, score_kind=fuse),
        held_out_metrics=problem.metrics(held, None),
        equal_metrics=problem.metrics(problem.fuse_rows(equal, None), None),
        final=final,
    )
