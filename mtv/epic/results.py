"""Results files: scores per example, the one format shared by evaluate, ensemble and epic-score.

Our format is a numpy `.npz` archive (no pickles inside) with these keys:

- `ids`            [N] str    example ids (for Epic-Kitchens: the narration_id of each segment).
- `<head>_output`  [N, C] float  one array per classification head. Single-head models use the head
                              name `logits` (`logits_output`); Epic-Kitchens models use `verb_output`
                              [N, 97] and `noun_output` [N, 300].
- `narration_id`   [N] str    written only when both `verb` and `noun` heads are present: a copy of
                              `ids` under the key the official epic-kitchens C1-Action-Recognition tools
                              read. On reading, a file without `ids` may use `narration_id` instead.
- `score_kind`     0-d str    'logits' (raw pre-softmax scores) or 'probabilities' (rows sum to 1).

The official tools' own format, a pickled dict `{'verb_output': [N, 97], 'noun_output': [N, 300],
'narration_id': [N]}` or a pickled list of such dicts, one per segment, is written by
`write_epic_pickle` and read by `read_results(..., allow_pickle=True)`. Unpickling can run arbitrary
code, so `.pkl` files are only read when the caller opts in. That layout has no score kind: the official
tools treat every score as a raw (pre-softmax) score, so probabilities are pickled as log-probabilities
(float64), whose softmax is the probabilities again. A probability-mode `.npz` and its `.pkl` therefore
score identically, with our scorer and with the official one.

A truncated or corrupt file is refused with a ResultsError naming it (never a zipfile/pickle traceback).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mtv.errors import ResultsError
from mtv.utils.fileio import atomic_path, writing

SCORE_KINDS = ("logits", "probabilities")
# Epic-Kitchens-100 class counts (EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv).
KNOWN_CLASSES = {"verb": 97, "noun": 300}
OUTPUT_SUFFIX = "_output"
PICKLE_SUFFIXES = (".pkl", ".pickle")
_ZIP_MAGIC = b"PK\x03\x04"
_SHOW = 5  # how many offending ids an error message lists
PROBABILITY_FLOOR = 1e-30  # probabilities are clipped here before the log, so a zero probability stays finite
# What a damaged .npz raises inside np.load: truncated (BadZipFile, EOFError), bad CRC (BadZipFile), bad
# deflate stream (zlib.error), mangled .npy header (ValueError, SyntaxError), missing member (KeyError).
_NPZ_ERRORS = (ValueError, OSError, EOFError, KeyError, SyntaxError, zipfile.BadZipFile, zlib.error)


@dataclasses.dataclass(frozen=True)
class Results:
    """Scores of one model (or a fusion) over a set of examples."""

    ids: np.ndarray
    outputs: dict[str, np.ndarray]
    score_kind: str = "logits"
    source: str | None = None  # the file it came from, for error messages

    @property
    def heads(self) -> list[str]:
        """Head names in a fixed (sorted) order."""
        return sorted(self.outputs)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Results:
        """Returns these results restricted/reordered to the rows `index`."""
        return dataclasses.replace(
            self, ids=self.ids[index], outputs={k: v[index] for k, v in self.outputs.items()}
        )

    def describe(self) -> str:
        """A short name for messages: the source file, or 'results'."""
        return f"'{self.source}'" if self.source else "results"


def raw_scores(results: Results, head: str) -> np.ndarray:
    """The head's scores as raw (pre-softmax) float64 scores: logits as given, probabilities as log-probs."""
    scores = np.asarray(results.outputs[head], np.float64)
    if results.score_kind == "probabilities":
        return np.log(np.maximum(scores, PROBABILITY_FLOOR))
    return scores


def _few(items, n: int = _SHOW) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def validate(
    ids,
    outputs: Mapping[str, np.ndarray],
    score_kind: str = "logits",
    *,
    source: str | None = None,
    expected: Mapping[str, int] | None = None,
) -> Results:
    """Checks ids, outputs and score_kind; returns a `Results` or raises ResultsError naming the problem."""
    where = f"'{source}'" if source else "results"
    if score_kind not in SCORE_KINDS:
        raise ResultsError(f"{where}: score_kind is {score_kind!r}; expected one of {SCORE_KINDS}")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ResultsError(f"{where}: ids must be a 1-D array, got shape {ids.shape}")
    if ids.dtype.kind not in "UOSiu":
        raise ResultsError(f"{where}: ids must be strings, got dtype {ids.dtype}")
    ids = ids.astype(str)
    if len(ids) == 0:
        raise ResultsError(f"{where}: holds no examples (ids is empty)")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dups = uniq[counts > 1]
        raise ResultsError(f"{where}: {len(dups)} duplicate ids, e.g. {_few(dups)}; each id must appear once")
    if not outputs:
        raise ResultsError(f"{where}: no score arrays (expected at least one '<head>{OUTPUT_SUFFIX}' array)")
    known = dict(KNOWN_CLASSES)
    known.update(expected or {})
    clean: dict[str, np.ndarray] = {}
    for head, scores in outputs.items():
        name = f"{head}{OUTPUT_SUFFIX}"
        if not head or not head.replace("_", "a").isalnum():
            raise ResultsError(f"{where}: head name {head!r} must be letters, digits or '_'")
        scores = np.asarray(scores)
        if scores.dtype.kind not in "fiu":
            raise ResultsError(f"{where}: '{name}' must hold numbers, got dtype {scores.dtype}")
        if scores.dtype.kind != "f":
            scores = scores.astype(np.float32)
        if scores.ndim != 2:
            raise ResultsError(f"{where}: '{name}' must be [N, classes], got shape {scores.shape}")
        if scores.shape[0] != len(ids):
            raise ResultsError(
                f"{where}: '{name}' has {scores.shape[0]} rows but there are {len(ids)} ids; "
                "each id needs one row of scores"
            )
        if head in known and scores.shape[1] != known[head]:
            raise ResultsError(
                f"{where}: '{name}' has {scores.shape[1]} classes; expected {known[head]} {head} classes"
            )
        bad_rows = ~np.isfinite(scores).all(axis=1)
        if bad_rows.any():
            n_bad = int((~np.isfinite(scores)).sum())
            first = str(ids[np.argmax(bad_rows)])
            raise ResultsError(
                f"{where}: '{name}' has {n_bad} non-finite scores (NaN/inf) in {int(bad_rows.sum())} rows; "
                f"first at id {first!r}"
            )
        if score_kind == "probabilities" and (scores < 0).any():
            raise ResultsError(f"{where}: '{name}' has negative values but score_kind is 'probabilities'")
        clean[head] = scores
    return Results(ids=ids, outputs=clean, score_kind=score_kind, source=source)


def _arrays(results: Results) -> dict[str, np.ndarray]:
    arrays = {"ids": results.ids, "score_kind": np.asarray(results.score_kind)}
    for head, scores in results.outputs.items():
        arrays[f"{head}{OUTPUT_SUFFIX}"] = scores
    if "verb" in results.outputs and "noun" in results.outputs:
        arrays["narration_id"] = results.ids
    return arrays


def write_results(
    path: str | os.PathLike,
    ids,
    outputs: Mapping[str, np.ndarray],
    *,
    score_kind: str = "logits",
    expected: Mapping[str, int] | None = None,
) -> Path:
    """Validates and writes a `.npz` results file atomically; returns its path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ResultsError(f"'{path}': results files are written as .npz; give a path ending in .npz")
    results = validate(ids, outputs, score_kind, source=str(path), expected=expected)
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **_arrays(results))
    return path


def save(path: str | os.PathLike, results: Results) -> Path:
    """Writes a `Results` to `path` (.npz, or the official pickle layout for .pkl)."""
    if Path(path).suffix in PICKLE_SUFFIXES:
        return write_epic_pickle(path, results)
    return write_results(path, results.ids, results.outputs, score_kind=results.score_kind)


def write_epic_pickle(path: str | os.PathLike, results: Results) -> Path:
    """Pickles the official C1-Action-Recognition dict layout (verb_output, noun_output, narration_id).

    Raw scores keep their dtype (a float32 -> float64 change could reorder near ties between the .npz and
    the .pkl); probabilities become float64 log-probabilities, as the layout can only hold raw scores.
    """
    path = Path(path)
    results = validate(results.ids, results.outputs, results.score_kind, source=str(path))
    missing = [h for h in ("verb", "noun") if h not in results.outputs]
    if missing:
        raise ResultsError(
            f"'{path}': the Epic-Kitchens pickle needs verb and noun scores; missing {missing} "
            f"(have heads {results.heads})"
        )
    if results.score_kind == "probabilities":
        verb, noun = raw_scores(results, "verb"), raw_scores(results, "noun")
    else:
        verb, noun = results.outputs["verb"], results.outputs["noun"]
    payload = {"verb_output": verb, "noun_output": noun, "narration_id": np.asarray(results.ids)}
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _split(arrays: Mapping[str, np.ndarray], where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if "ids" in arrays:
        ids = np.asarray(arrays["ids"])
        if "narration_id" in arrays and not np.array_equal(
            np.asarray(arrays["narration_id"]).astype(str), ids.astype(str)
        ):
            raise ResultsError(f"{where}: 'narration_id' differs from 'ids'; they must hold the same ids")
    elif "narration_id" in arrays:
        ids = np.asarray(arrays["narration_id"])
    else:
        raise ResultsError(f"{where}: no 'ids' (or 'narration_id') array; found keys {sorted(arrays)}")
    outputs = {
        k[: -len(OUTPUT_SUFFIX)]: np.asarray(v) for k, v in arrays.items() if k.endswith(OUTPUT_SUFFIX)
    }
    if not outputs:
        raise ResultsError(
            f"{where}: no '<head>{OUTPUT_SUFFIX}' score arrays (e.g. 'verb_output', 'logits_output'); "
            f"found keys {sorted(arrays)}"
        )
    return ids, outputs


def _read_npz(path: Path, allow_pickle: bool) -> tuple[dict[str, np.ndarray], str]:
    where = f"'{path}'"
    try:
        with np.load(path, allow_pickle=allow_pickle) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ResultsError(
                f"{where} stores object arrays, which need unpickling; re-save ids as str arrays, "
                "or pass --allow_pickle (allow_pickle=True) if you trust the file"
            ) from None
        raise _damaged(where, e) from None
    except _NPZ_ERRORS as e:
        raise _damaged(where, e) from None
    kind = arrays.pop("score_kind", np.asarray("logits"))
    kind = str(kind.item() if kind.ndim == 0 else kind)
    return arrays, kind


def _damaged(where: str, error: BaseException) -> ResultsError:
    return ResultsError(
        f"{where} is not a readable .npz archive (truncated or corrupt? {type(error).__name__}: {error}); "
        "write it again"
    )


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    where = f"'{path}'"
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as e:  # any unpickling failure means a bad file to the user
        raise ResultsError(
            f"{where} could not be unpickled (truncated or corrupt? {type(e).__name__}: {e})"
        ) from None
    if isinstance(data, list):
        # List layout: one dict per segment.
        if not data or not all(isinstance(r, Mapping) for r in data):
            raise ResultsError(f"{where}: expected a non-empty list of dicts (one per segment)")
        keys = set(data[0])
        for i, r in enumerate(data):
            if set(r) != keys:
                raise ResultsError(f"{where}: entry {i} has keys {sorted(r)}, entry 0 has {sorted(keys)}")
        try:
            data = {k: np.stack([np.asarray(r[k]) for r in data]) for k in keys}
        except ValueError as e:
            raise ResultsError(f"{where}: entries have inconsistent shapes: {e}") from None
    if not isinstance(data, Mapping):
        raise ResultsError(
            f"{where}: expected a dict with 'verb_output', 'noun_output', 'narration_id' "
            f"(or a list of such dicts), got {type(data).__name__}"
        )
    return {str(k): np.asarray(v) for k, v in data.items()}


def read_results(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    expected: Mapping[str, int] | None = None,
) -> Results:
    """Reads and validates a results file (.npz; .pkl only with allow_pickle=True)."""
    path = Path(path)
    where = f"'{path}'"
    if not path.is_file():
        raise ResultsError(f"{where}: no such results file")
    if path.suffix == ".pt":
        raise ResultsError(
            f"{where}: torch .pt files are not supported (they need torch to read); "
            "re-save the dict as .pkl with pickle.dump, or as .npz"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    score_kind = "logits"
    if magic == _ZIP_MAGIC:
        arrays, score_kind = _read_npz(path, allow_pickle)
    elif path.suffix == ".npz":
        raise ResultsError(f"{where} is not a readable .npz archive (it is not a zip file)")
    elif path.suffix in PICKLE_SUFFIXES or magic[:1] == b"\x80":
        if not allow_pickle:
            raise ResultsError(
                f"{where} is a pickle; unpickling can run arbitrary code from the file, so it is only read "
                "when you pass --allow_pickle (allow_pickle=True). Do so only for files you trust, "
                "or convert it to .npz"
            )
        arrays = _read_pickle(path)
    else:
        raise ResultsError(f"{where}: unknown results format; expected .npz (or .pkl with --allow_pickle)")
    ids, outputs = _split(arrays, where)
    return validate(ids, outputs, score_kind, source=str(path), expected=expected)
