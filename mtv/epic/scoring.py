"""Epic-Kitchens-100 action recognition: action scores, the official metrics, challenge submissions.

Semantics follow `evaluate.py`, `create_submission.py`, `utils/scoring.py` and `utils/challenge.py` of
github.com/epic-kitchens/C1-Action-Recognition (read at commits 2c568d7 (evaluate.py), 3cfded7
(create_submission.py) and d125b92 (utils/); the facts only, the code is written here):

- Action scores: per segment take the top-100 verb and top-100 noun raw scores, softmax each of the two
  lists, take the outer product and keep the top-100 (verb, noun) pairs; action id = verb * 1000 + noun.
  (The official code's scipy softmax normalises over the whole [N, 100] array at once; that changes the
  score values by a per-file constant but never a ranking. We normalise per segment, so the scores are
  probabilities.)
- Accuracies are means over segments (not mean class accuracy) of top-k hits: `all_*` at k = 1 and 5;
  `tail_*` and `unseen_*` at k = 1 only. Tail verb/noun use the segments whose verb/noun class is in the
  tail list; tail action uses the segments whose verb OR noun class is a tail class. Unseen uses the
  segments of the unseen participants. Values are percentages.
- Submission: a zip (deflate, level 5) holding `test.json` = {"version": "0.2", "challenge", "sls_pt",
  "sls_tl", "sls_td", "results": {narration_id: {"verb": {"0": s, ..., "96": s}, "noun": {"0": s, ...,
  "299": s}}}} with raw scores (the server applies softmax), serialised as `json.dumps` does by default
  (", " and ": " separators, floats as Python's repr of float(score)). By default our `test.json` is
  byte for byte what `create_submission.py` writes for the same scores and ids. The per-segment "action"
  object (100 "verb,noun" keys with our action probabilities, from the EPIC-Kitchens-55 submission format,
  epic-kitchens-55-lib docs/source/submission_format.md) is opt-in: the official writer does not add it.
- Without the test ids (EPIC_100_test_timestamps.csv) a submission must hold exactly TEST_SEGMENTS
  (13,092) segments; with them, exactly those ids.

Ties (equal scores). Verbs and nouns: the lower class index ranks first. Actions: between equal
probabilities, the pair with the better-ranked verb first, then the better-ranked noun (row-major over the
top-verb x top-noun lists). The official code sorts with numpy's default `argsort` reversed; that sort is
not stable, so its order between exactly equal scores is unspecified (it may depend on the numpy build),
and a top-k accuracy can differ from ours only on a segment whose true class ties at the cut-off.

Results whose score_kind is 'probabilities' are turned into log-probabilities wherever raw scores are
needed, so the softmax recovers the given probabilities and actions rank by their product; they are
written to submissions and official pickles that way, so every path ranks them alike.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mtv.epic.results import Results, raw_scores, read_results
from mtv.errors import ConfigError, DataError, ResultsError
from mtv.utils.fileio import atomic_path, writing
from mtv.utils.numeric import softmax, top_k

VERB_CLASSES = 97
NOUN_CLASSES = 300
ACTION_VERB_MULTIPLIER = 1000  # action id = verb * 1000 + noun (C1-Action-Recognition utils/actions.py)
TOP_N = 100
TEST_SEGMENTS = 13092  # rows of EPIC_100_test_timestamps.csv: the segments a submission must score
SUBMISSION_VERSION = "0.2"
CHALLENGES = ("action_recognition", "action_anticipation")
SLS_RANGE = range(0, 6)  # Supervision levels 0..5, see github.com/epic-kitchens/sls
_SHOW = 5

log = logging.getLogger(__name__)


def action_id(verb, noun):
    """Action id of a (verb, noun) pair: verb * 1000 + noun (works on ints and arrays)."""
    return np.asarray(verb) * ACTION_VERB_MULTIPLIER + np.asarray(noun)


def action_scores(
    verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int = TOP_N
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-n actions per segment from raw verb/noun scores: (verbs [N, n], nouns [N, n], probs [N, n])."""
    verb_scores = np.asarray(verb_scores, np.float64)
    noun_scores = np.asarray(noun_scores, np.float64)
    if verb_scores.ndim != 2 or noun_scores.ndim != 2 or len(verb_scores) != len(noun_scores):
        raise ResultsError(
            f"action scores need verb [N, V] and noun [N, C] scores with the same N, got "
            f"{verb_scores.shape} and {noun_scores.shape}"
        )
    return _actions_from_tops(top_k(verb_scores, top_n), top_k(noun_scores, top_n), top_n)


def _actions_from_tops(verb_top, noun_top, top_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`action_scores` given the sorted top verbs and nouns (indices, raw scores) of each segment."""
    (top_verbs, verb_vals), (top_nouns, noun_vals) = verb_top, noun_top
    verb_probs, noun_probs = softmax(verb_vals), softmax(noun_vals)
    n_v, n_n = verb_probs.shape[1], noun_probs.shape[1]
    k = min(top_n, n_v * n_n)
    # Both lists are sorted, so the pair at positions (i, j) is beaten or tied by the (i+1)(j+1) - 1 pairs
    # above-left of it: only pairs with (i+1)(j+1) <= k can be in the top k. ~480 pairs instead of 9,700.
    i, j = np.nonzero((np.arange(1, n_v + 1)[:, None] * np.arange(1, n_n + 1)[None, :]) <= k)
    cand = verb_probs[:, i] * noun_probs[:, j]
    order, _ = top_k(cand, k)
    verbs = np.take_along_axis(top_verbs, i[order], axis=1)
    nouns = np.take_along_axis(top_nouns, j[order], axis=1)
    return verbs, nouns, np.take_along_axis(cand, order, axis=1)


# ----------------------------------------------------------------------------- annotations


def _read_csv(path: str | os.PathLike, needed: Sequence[str]) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}': no such CSV file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"'{path}': missing column(s) {missing}; header is {header}")
        cols: dict[str, list[str]] = {c: [] for c in needed}
        for row in reader:
            for c in needed:
                cols[c].append(row[c])
    return cols


def _ints(values: list[str], path, column: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        bad = next(v for v in values if not v.strip().lstrip("-").isdigit())
        raise DataError(f"'{path}': column '{column}' holds {bad!r}; expected integer class ids") from None


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Labelled Epic-Kitchens segments: one entry per narration_id."""

    narration_id: np.ndarray
    participant_id: np.ndarray
    verb_class: np.ndarray
    noun_class: np.ndarray
    source: str = ""


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Reads an EPIC_100_{train,validation}.csv-style file (narration_id, participant_id, verb/noun_class)."""
    cols = _read_csv(path, ("narration_id", "participant_id", "verb_class", "noun_class"))
    ann = Annotations(
        narration_id=np.array(cols["narration_id"], dtype=str),
        participant_id=np.array(cols["participant_id"], dtype=str),
        verb_class=_ints(cols["verb_class"], path, "verb_class"),
        noun_class=_ints(cols["noun_class"], path, "noun_class"),
        source=str(path),
    )
    if len(ann.narration_id) == 0:
        raise DataError(f"'{path}': no segments")
    checks = (("verb_class", ann.verb_class, VERB_CLASSES), ("noun_class", ann.noun_class, NOUN_CLASSES))
    for name, values, n in checks:
        if values.min() < 0 or values.max() >= n:
            raise DataError(f"'{path}': {name} outside 0..{n - 1} (found {values.min()}..{values.max()})")
    uniq, counts = np.unique(ann.narration_id, return_counts=True)
    if len(uniq) != len(ann.narration_id):
        raise DataError(f"'{path}': duplicate narration_id(s), e.g. {_strs(uniq[counts > 1])}")
    return ann


def read_column(path: str | os.PathLike, column: str) -> np.ndarray:
    """One column of a small CSV (e.g. EPIC_100_tail_verbs.csv 'verb', unseen ids 'participant_id')."""
    return np.array(_read_csv(path, (column,))[column], dtype=str)


def read_narration_ids(path: str | os.PathLike) -> np.ndarray:
    """The narration_id column of a CSV such as EPIC_100_test_timestamps.csv."""
    return read_column(path, "narration_id")


# ----------------------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class SegmentLabels:
    """Ground truth joined to a results set's rows: classes and the metric subsets' masks."""

    verb: np.ndarray
    noun: np.ndarray
    action: np.ndarray
    subsets: dict[str, np.ndarray]  # metric name -> boolean mask over segments

    def take(self, index: np.ndarray) -> SegmentLabels:
        """These labels restricted/reordered to the rows `index` (e.g. one fold)."""
        return SegmentLabels(
            verb=self.verb[index],
            noun=self.noun[index],
            action=self.action[index],
            subsets={name: mask[index] for name, mask in self.subsets.items()},
        )


def _strs(ids) -> list[str]:
    """A few ids as plain str (numpy 2 would print np.str_('...'))."""
    return [str(i) for i in list(ids)[:_SHOW]]


def _missing_extra_message(results: Results, ann: Annotations, missing, extra) -> str:
    parts = []
    if len(missing):
        parts.append(f"{len(missing)} annotated segment(s) have no scores, e.g. {_strs(missing)}")
    if len(extra):
        parts.append(f"{len(extra)} scored id(s) are not in the annotations, e.g. {_strs(extra)}")
    return (
        f"{results.describe()} and annotations '{ann.source}' must cover the same narration_ids: "
        + "; ".join(parts)
    )


class EpicScorer:
    """Computes the official Epic-Kitchens-100 metrics; reads the CSVs once, scores many result sets."""

    def __init__(
        self,
        annotations: Annotations,
        *,
        tail_verbs: Sequence[int] | None = None,
        tail_nouns: Sequence[int] | None = None,
        unseen_participants: Sequence[str] | None = None,
        tail_sources: tuple[str, str] = ("tail verb classes", "tail noun classes"),
    ):
        self.annotations = annotations
        self.tail_verbs = None if tail_verbs is None else np.asarray(tail_verbs, np.int64)
        self.tail_nouns = None if tail_nouns is None else np.asarray(tail_nouns, np.int64)
        self.unseen = None if unseen_participants is None else np.asarray(unseen_participants, str)
        self._tail_sources = tail_sources
        self._index = {nid: i for i, nid in enumerate(annotations.narration_id)}

    @classmethod
    def from_csv(
        cls,
        annotations_csv: str | os.PathLike,
        *,
        tail_verb_classes_csv: str | os.PathLike | None = None,
        tail_noun_classes_csv: str | os.PathLike | None = None,
        unseen_participant_ids_csv: str | os.PathLike | None = None,
    ) -> EpicScorer:
        """Builds a scorer from the official annotation CSVs."""

        def tail(path, column):
            if path is None:
                return None
            return _ints(list(read_column(path, column)), path, column)

        return cls(
            read_annotations(annotations_csv),
            tail_verbs=tail(tail_verb_classes_csv, "verb"),
            tail_nouns=tail(tail_noun_classes_csv, "noun"),
            unseen_participants=(
                None
                if unseen_participant_ids_csv is None
                else read_column(unseen_participant_ids_csv, "participant_id")
            ),
            tail_sources=(str(tail_verb_classes_csv), str(tail_noun_classes_csv)),
        )

    def labels_for(self, results: Results) -> SegmentLabels:
        """Joins annotations to the results' ids; missing or extra ids are an error."""
        ann = self.annotations
        rows = np.array([self._index.get(i, -1) for i in results.ids])
        if (rows < 0).any() or len(rows) != len(ann.narration_id):
            scored = set(results.ids.tolist())
            missing = np.array([n for n in ann.narration_id if n not in scored])
            raise ResultsError(_missing_extra_message(results, ann, missing, results.ids[rows < 0]))
        verb, noun = ann.verb_class[rows], ann.noun_class[rows]
        subsets: dict[str, np.ndarray] = {}
        if self.tail_verbs is not None:
            subsets["tail_verb"] = np.isin(verb, self.tail_verbs)
        if self.tail_nouns is not None:
            subsets["tail_noun"] = np.isin(noun, self.tail_nouns)
        if self.tail_verbs is not None and self.tail_nouns is not None:
            subsets["tail_action"] = subsets["tail_verb"] | subsets["tail_noun"]
        for name, source in (("tail_verb", self._tail_sources[0]), ("tail_noun", self._tail_sources[1])):
            if name in subsets and not subsets[name].any():
                raise DataError(f"'{source}': no segment has one of these tail classes; nothing to evaluate")
        if self.unseen is not None:
            unseen = np.isin(ann.participant_id[rows], self.unseen)
            if unseen.any():
                for task in ("verb", "noun", "action"):
                    subsets[f"unseen_{task}"] = unseen
            else:
                log.warning("There are no unseen segments to evaluate; unseen_* metrics are left out")
        return SegmentLabels(verb=verb, noun=noun, action=action_id(verb, noun), subsets=subsets)

    def metrics(self, results: Results, labels: SegmentLabels | None = None) -> dict[str, float]:
        """Official metric names -> percentages, in the official order."""
        for head, n in (("verb", VERB_CLASSES), ("noun", NOUN_CLASSES)):
            if head not in results.outputs:
                raise ResultsError(
                    f"{results.describe()} has no '{head}_output' scores (heads: {results.heads}); "
                    "Epic-Kitchens scoring needs verb and noun scores"
                )
            if results.outputs[head].shape[1] != n:
                raise ResultsError(
                    f"{results.describe()}: '{head}_output' has {results.outputs[head].shape[1]} classes; "
                    f"expected {n}"
                )
        labels = labels or self.labels_for(results)
        verb_raw, noun_raw = raw_scores(results, "verb"), raw_scores(results, "noun")
        # Only top-1/top-5 are reported, and the top-5 actions always come from the top-5 verbs and nouns,
        # so ranking the top 5 here equals the first 5 of the official top-100 list.
        return self.metrics_from_tops(top_k(verb_raw, 5), top_k(noun_raw, 5), labels)

    @staticmethod
    def metrics_from_tops(verb_top, noun_top, labels: SegmentLabels) -> dict[str, float]:
        """The metrics from each segment's sorted top verbs and nouns (`top_k` output) and its labels.

        With k = 5 columns every metric is computed; with k = 1 only the top-1 ones (a fast path for the
        weight search). A subset with no segment (possible in one fold) is left out.
        """
        k = min(verb_top[0].shape[1], noun_top[0].shape[1])
        verbs, nouns, _ = _actions_from_tops(verb_top, noun_top, k)
        ranked = {"verb": verb_top[0][:, :k], "noun": noun_top[0][:, :k], "action": action_id(verbs, nouns)}
        truth = {"verb": labels.verb, "noun": labels.noun, "action": labels.action}
        hits = {task: ranked[task] == truth[task][:, None] for task in ranked}
        out: dict[str, float] = {}
        for task in ("verb", "noun", "action"):
            for at in (1, 5):
                if at <= k:
                    out[f"all_{task}_accuracy_at_{at}"] = _percent(hits[task][:, :at].any(axis=1))
        for split in ("tail", "unseen"):
            for task in ("verb", "noun", "action"):
                mask = labels.subsets.get(f"{split}_{task}")
                if mask is not None and mask.any():
                    out[f"{split}_{task}_accuracy_at_1"] = _percent(hits[task][mask, 0])
        return out


def _percent(hits: np.ndarray) -> float:
    return float(hits.mean() * 100.0)


def compute_metrics(
    results: Results | str | os.PathLike,
    annotations_csv: str | os.PathLike,
    *,
    tail_verb_classes_csv: str | os.PathLike | None = None,
    tail_noun_classes_csv: str | os.PathLike | None = None,
    unseen_participant_ids_csv: str | os.PathLike | None = None,
) -> dict[str, float]:
    """The official Epic-Kitchens-100 validation metrics (percentages) of a results set or file."""
    if not isinstance(results, Results):
        results = read_results(results)
    scorer = EpicScorer.from_csv(
        annotations_csv,
        tail_verb_classes_csv=tail_verb_classes_csv,
        tail_noun_classes_csv=tail_noun_classes_csv,
        unseen_participant_ids_csv=unseen_participant_ids_csv,
    )
    return scorer.metrics(results)


# ----------------------------------------------------------------------------- submission


def _scores_object(values: np.ndarray) -> str:
    # As utils/challenge.py's make_scores_dict: keys str(class), values float(score), json.dumps defaults.
    return json.dumps({str(c): float(s) for c, s in enumerate(values)})


def _check_test_ids(results: Results, expected_ids: Sequence[str] | None, allow_partial: bool) -> None:
    """The results must score exactly the test segments: the given ids, or else TEST_SEGMENTS of them."""
    if expected_ids is not None:
        have, want = set(results.ids.tolist()), {str(i) for i in expected_ids}
        missing, extra = sorted(want - have), sorted(have - want)
        if missing or extra:
            msg = []
            if missing:
                msg.append(f"{len(missing)} test segment(s) have no scores, e.g. {missing[:_SHOW]}")
            if extra:
                msg.append(f"{len(extra)} id(s) are not test segments, e.g. {extra[:_SHOW]}")
            raise ResultsError(f"{results.describe()}: " + "; ".join(msg))
        return
    if allow_partial or len(results) == TEST_SEGMENTS:
        return
    gap = TEST_SEGMENTS - len(results)
    what = f"{gap} test segment(s) are missing" if gap > 0 else f"{-gap} more than there are test segments"
    raise ResultsError(
        f"{results.describe()} scores {len(results)} segments but the EPIC-100 test set has {TEST_SEGMENTS}: "
        f"{what}. Score every segment of EPIC_100_test_timestamps.csv (pass it as --test_timestamps to check "
        "the ids themselves)"
    )


def make_submission(
    results: Results | str | os.PathLike,
    out_zip: str | os.PathLike,
    *,
    sls_pt: int,
    sls_tl: int,
    sls_td: int,
    challenge: str = "action_recognition",
    include_actions: bool = False,
    expected_ids: Sequence[str] | None = None,
    allow_partial: bool = False,
) -> Path:
    """Writes the challenge zip (`test.json`, version 0.2) atomically; returns its path.

    By default `test.json` is byte-identical to the official `create_submission.py` output for the same
    scores and ids (see the module doc); `include_actions` adds the top-100 "verb,noun" action scores.
    The results must cover `expected_ids` exactly (segments are then written in their order), or, without
    them, hold TEST_SEGMENTS segments
    (`allow_partial` lifts that for a dry run: the server would reject such a file).
    """
    if not isinstance(results, Results):
        results = read_results(results)
    out_zip = Path(out_zip)
    for name, value in (("sls_pt", sls_pt), ("sls_tl", sls_tl), ("sls_td", sls_td)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value not in SLS_RANGE:
            raise ConfigError(f"{name} is {value!r}; expected an integer supervision level 0..5")
    if challenge not in CHALLENGES:
        raise ConfigError(f"challenge is {challenge!r}; expected one of {CHALLENGES}")
    for head, n in (("verb", VERB_CLASSES), ("noun", NOUN_CLASSES)):
        if head not in results.outputs:
            raise ResultsError(
                f"{results.describe()} has no '{head}_output' scores (heads: {results.heads}); "
                "a submission needs verb and noun scores"
            )
        if results.outputs[head].shape[1] != n:
            raise ResultsError(f"{results.describe()}: '{head}_output' must have {n} classes")
    _check_test_ids(results, expected_ids, allow_partial)
    verb_raw, noun_raw = raw_scores(results, "verb"), raw_scores(results, "noun")
    ids = [str(i) for i in results.ids.tolist()]
    # Segments in the test CSV's order when it is given; the results' own order (record order, which
    # `mtv data prepare` shuffles) otherwise.
    position = {nid: n for n, nid in enumerate(ids)}
    order = [position[str(i)] for i in expected_ids] if expected_ids is not None else range(len(ids))
    if include_actions:
        verbs, nouns, probs = action_scores(verb_raw, noun_raw, top_n=TOP_N)
    header = {
        "version": SUBMISSION_VERSION,
        "challenge": challenge,
        "sls_pt": int(sls_pt),
        "sls_tl": int(sls_tl),
        "sls_td": int(sls_td),
    }
    with writing(out_zip), atomic_path(out_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as zf:
            # Streamed segment by segment (the full test set is ~5.2M numbers), in exactly the bytes that
            # json.dumps(submission_dict) gives for the official dict (key order as utils/challenge.py).
            with zf.open("test.json", "w") as f:
                f.write(json.dumps(header)[:-1].encode() + b', "results": {')
                for k, n in enumerate(order):
                    entry = f'"verb": {_scores_object(verb_raw[n])}, "noun": {_scores_object(noun_raw[n])}'
                    if include_actions:
                        actions = {
                            f"{v},{c}": float(p) for v, c, p in zip(verbs[n], nouns[n], probs[n], strict=True)
                        }
                        entry += f', "action": {json.dumps(actions)}'
                    sep = ", " if k else ""
                    f.write(f"{sep}{json.dumps(ids[n])}: {{{entry}}}".encode())
                f.write(b"}}")
    return out_zip


def read_submission(path: str | os.PathLike) -> dict:
    """Loads `test.json` from a submission zip (for checking what was written)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("test.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ResultsError(f"'{path}' is not a readable submission zip with test.json: {e}") from None


def metrics_table(metrics: Mapping[str, float]) -> str:
    """`name: value` lines, as the official evaluate.py prints them."""
    return "\n".join(f"{k}: {v:.4f}" for k, v in metrics.items())
