"""Score fusion: align results by id, then a weighted fusion, with one weight vector or one per head.

Several models' results and one model's test-time views (e.g. clips x crops saved as separate files)
go through the same `fuse`. A team searches the weights on validation (`mtv.epic.search`), then fuses
the test results with those weights and writes the challenge submission (`mtv.epic.scoring.make_submission`).

Fusion modes:
- 'logits': weighted mean of raw scores (probabilities inputs enter as log-probabilities), i.e. a
  weighted geometric mean of the models' probabilities; the result has score_kind 'logits'.
- 'probabilities': weighted mean of softmax probabilities; the result has score_kind 'probabilities'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mtv.epic.results import Results, raw_scores
from mtv.errors import ResultsError
from mtv.utils.numeric import to_probabilities

FUSE_MODES = ("logits", "probabilities")
_SHOW = 5

# One weight per results file for every head, or {head: weights} (every head named once).
Weights = Sequence[float] | np.ndarray | Mapping[str, Sequence[float] | np.ndarray] | None


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


def check_heads(results_list: Sequence[Results]) -> None:
    """Every results set must have the first one's heads and class counts."""
    ref = results_list[0]
    shapes = {h: v.shape[1] for h, v in ref.outputs.items()}
    for i, r in enumerate(results_list[1:], start=1):
        other = {h: v.shape[1] for h, v in r.outputs.items()}
        if other != shapes:
            raise ResultsError(
                f"{_name(r, i)} has heads {other} (head: classes) but {_name(ref, 0)} has {shapes}; "
                "fused results need the same heads and class counts"
            )


def _normalise(weights, count: int, what: str = "weights") -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != count:
        raise ResultsError(f"got {len(w)} {what} for {count} results files; give one weight per file")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ResultsError(f"{what} must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ResultsError(f"{what} sum to 0 ({w.tolist()}); at least one must be positive")
    return w / w.sum()


def head_weights(weights: Weights, heads: Sequence[str], count: int) -> dict[str, np.ndarray]:
    """{head: normalised weights} from one shared weight vector (or None: equal) or a per-head mapping."""
    if not isinstance(weights, Mapping):
        shared = _normalise(weights, count)
        return {h: shared for h in heads}
    missing, unknown = sorted(set(heads) - set(weights)), sorted(set(weights) - set(heads))
    if missing or unknown:
        raise ResultsError(
            f"per-head weights must name every head once: results have heads {sorted(heads)}; "
            f"missing {missing}, unknown {unknown}"
        )
    return {h: _normalise(weights[h], count, f"{h} weights") for h in heads}


def _as_kind(results: Results, head: str, mode: str) -> np.ndarray:
    if mode == "logits":
        return raw_scores(results, head)
    return to_probabilities(results.outputs[head], results.score_kind)


def check_mode(mode: str) -> None:
    """Refuses an unknown fusion mode."""
    if mode not in FUSE_MODES:
        raise ResultsError(f"fuse mode is {mode!r}; expected one of {FUSE_MODES}")


def stacks_of(results_list: Sequence[Results], mode: str) -> dict[str, np.ndarray]:
    """Per head, the inputs in fusion space stacked as [models, N, classes]."""
    return {h: np.stack([_as_kind(r, h, mode) for r in results_list]) for h in results_list[0].heads}


def combine(stack: np.ndarray, w: np.ndarray, dtype) -> np.ndarray:
    """sum_m w[m] * stack[m] in a fixed order, element by element, cast to `dtype`.

    Unlike a BLAS contraction, each element's value cannot depend on how many rows are fused at once, so
    fusing one fold's rows gives bit for bit the rows of fusing everything (the weight search relies on it).
    """
    out = w[0] * stack[0]
    for m in range(1, len(w)):
        out += w[m] * stack[m]
    return out.astype(dtype, copy=False)


def fused_dtype(results_list: Sequence[Results]):
    """The dtype a fusion of these results is stored in (float32 inputs stay float32)."""
    return np.result_type(*[v.dtype for r in results_list for v in r.outputs.values()])


def fuse(results_list: Sequence[Results], weights: Weights = None, *, fuse: str = "logits") -> Results:
    """Weighted fusion of results sets aligned by id: one weight per file (shared by every head) or a
    {head: weights} mapping (e.g. separate verb and noun weights); each head's weights are normalised to 1."""
    check_mode(fuse)
    aligned = align(results_list)
    check_heads(aligned)
    w = head_weights(weights, aligned[0].heads, len(aligned))
    dtype = fused_dtype(aligned)
    stacks = stacks_of(aligned, fuse)
    outputs = {h: combine(stacks[h], w[h], dtype) for h in aligned[0].heads}
    return Results(ids=aligned[0].ids, outputs=outputs, score_kind=fuse)
