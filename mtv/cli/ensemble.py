"""`mtv ensemble`: fuse results files, optionally searching the weights on validation first.

With --search the weights are found by coordinate ascent (separate verb and noun weights) and reported
held out: the validation segments are split into --folds parts by video, each part is fused with weights
searched on the other parts, and the metrics of that out-of-fold fusion are printed beside equal weights
(mtv.epic.search). The weights applied to --apply_to (test) are then searched on all validation segments.
"""

from __future__ import annotations

from absl import flags

from mtv.cli.common_flags import define_allow_pickle
from mtv.epic import ensemble, search
from mtv.epic.results import read_results, save
from mtv.errors import ResultsError

HELP = "Fuse results files (weights, logits/probabilities); search weights on validation, apply to test."

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "out",
    None,
    "Where to write the fused results (.npz, or .pkl in the official layout). With --search and no "
    "--apply_to: the held-out validation fusion.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "weights", None, "Comma-separated weights, one per results file, for every head (normalised to sum 1).",
    flag_values=FLAGS,
)
flags.DEFINE_list("verb_weights", None, "Weights for the verb head only (with --noun_weights).", flag_values=FLAGS)
flags.DEFINE_list("noun_weights", None, "Weights for the noun head only (with --verb_weights).", flag_values=FLAGS)
flags.DEFINE_enum(
    "fuse",
    "logits",
    list(ensemble.FUSE_MODES),
    "Average raw scores (logits) or softmax probabilities.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "search",
    False,
    "Search the weights on these (validation) results; needs --annotations.",
    flag_values=FLAGS,
)
flags.DEFINE_string("annotations", None, "EPIC_100_validation.csv for --search.", flag_values=FLAGS)
flags.DEFINE_string("metric", search.DEFAULT_EPIC_METRIC, "Epic metric the search maximises.", flag_values=FLAGS)
flags.DEFINE_integer(
    "grid", search.SHARE_STEPS, "Search resolution: a model's share of a head's weights is tried at k/grid.",
    lower_bound=1, flag_values=FLAGS,
)
flags.DEFINE_integer(
    "folds", search.DEFAULT_FOLDS,
    "Held-out report: split validation into this many parts of whole videos, each scored with weights "
    "searched on the others.",
    lower_bound=2, flag_values=FLAGS,
)
flags.DEFINE_integer("seed", 0, "Seed of the split into --folds parts.", flag_values=FLAGS)
flags.DEFINE_bool(
    "per_head", True, "Search separate verb and noun weights (--noper_head: one vector for both).", flag_values=FLAGS
)
flags.DEFINE_list(
    "apply_to",
    None,
    "Comma-separated test results, one per validation file in the same order: fused with the "
    "weights searched on all validation segments and written to --out.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "val_out",
    None,
    "With --apply_to: where to write the held-out (out-of-fold) fused validation results.",
    flag_values=FLAGS,
)
define_allow_pickle(FLAGS)


def _read_all(paths: list[str]):
    return [read_results(p, allow_pickle=FLAGS.allow_pickle) for p in paths]


def _numbers(name: str, values: list[str] | None):
    if values is None:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ResultsError(f"--{name} must be numbers, got {','.join(values)!r}") from None


def _given_weights(heads: list[str]):
    """--weights for every head, or --verb_weights and --noun_weights (a mapping); None: equal weights."""
    verb, noun = _numbers("verb_weights", FLAGS.verb_weights), _numbers("noun_weights", FLAGS.noun_weights)
    if verb is None and noun is None:
        return _numbers("weights", FLAGS.weights)
    if FLAGS.weights is not None:
        raise ResultsError("give either --weights (every head) or --verb_weights and --noun_weights, not both")
    if verb is None or noun is None:
        raise ResultsError("--verb_weights and --noun_weights go together: give both")
    if sorted(heads) != ["noun", "verb"]:
        raise ResultsError(f"--verb_weights/--noun_weights need verb and noun results; these have heads {heads}")
    return {"verb": verb, "noun": noun}


def _csv(values) -> str:
    return ",".join(f"{w:.4g}" for w in values)


def _print_report(cv: search.CrossValidation, segments: int) -> None:
    metric = cv.metric
    print(f"held out: {len(cv.folds)} parts of whole videos; each part fused with weights searched on the others")
    for f, fold in enumerate(cv.folds, start=1):
        if metric not in fold.held_out:  # e.g. a tail/unseen metric on a part without such segments
            print(f"  part {f} ({len(fold.rows)} segments): no segment for {metric}")
            continue
        print(
            f"  part {f} ({len(fold.rows)} segments): equal weights {fold.equal[metric]:.4f}, "
            f"searched {fold.held_out[metric]:.4f}"
        )
    held, equal = cv.held_out_metrics[metric], cv.equal_metrics[metric]
    print(f"held-out {metric}: {held:.4f} (equal weights {equal:.4f}, gain {cv.gain:+.4f})")
    final = cv.final
    print(
        f"final weights, searched on all {segments} segments ({final.rounds} rounds, {final.evaluations} "
        f"evaluations; in-sample {metric} {final.score:.4f} is fitted, report the held-out number):"
    )
    heads = sorted(final.weights)
    for head in heads:
        print(f"  {head}: {_csv(final.weights[head])}")
    if heads == ["noun", "verb"]:
        print(f"  as flags: --verb_weights {_csv(final.weights['verb'])} --noun_weights {_csv(final.weights['noun'])}")


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise ResultsError("give one or more results files: mtv ensemble A.npz B.npz ... --out FUSED.npz")
    if not FLAGS.out:
        raise ResultsError("--out is required (where to write the fused results)")
    apply_to = FLAGS.apply_to
    if not FLAGS.search:
        for name in ("annotations", "apply_to", "val_out"):
            if FLAGS[name].value:
                raise ResultsError(f"--{name} is only used with --search")
        results = _read_all(paths)
        fused = ensemble.fuse(results, _given_weights(results[0].heads), fuse=FLAGS.fuse)
        save(FLAGS.out, fused)
        print(f"wrote {FLAGS.out}")
        return 0
    for name in ("weights", "verb_weights", "noun_weights"):
        if FLAGS[name].value is not None:
            raise ResultsError(f"--{name} and --search exclude each other: --search finds the weights")
    if not FLAGS.annotations:
        raise ResultsError("--search needs --annotations (the validation CSV, e.g. EPIC_100_validation.csv)")
    if apply_to and len(apply_to) != len(paths):
        raise ResultsError(
            f"--apply_to has {len(apply_to)} files but {len(paths)} validation files were given; "
            "give one test file per validation file, in the same order"
        )
    val = _read_all(paths)
    test = _read_all(apply_to) if apply_to else None  # read before searching: fail fast on bad files
    cv = search.cross_validate(
        val,
        FLAGS.annotations,
        folds=FLAGS.folds,
        seed=FLAGS.seed,
        metric=FLAGS.metric,
        grid=FLAGS.grid,
        fuse=FLAGS.fuse,
        per_head=FLAGS.per_head,
    )
    _print_report(cv, len(val[0]))
    val_out = FLAGS.val_out if apply_to else FLAGS.out
    if val_out:
        save(val_out, cv.held_out)
        print(f"wrote {val_out} (held-out fusion: `mtv epic-score` on it gives the held-out numbers)")
    if test is not None:
        save(FLAGS.out, ensemble.fuse(test, cv.final.weights, fuse=FLAGS.fuse))
        print(f"wrote {FLAGS.out}")
    return 0
