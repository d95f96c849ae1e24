"""`mtv ensemble`: fuse results files, optionally searching the weights on validation first."""

from __future__ import annotations

from absl import flags

from mtv.cli.common_flags import define_allow_pickle
from mtv.epic import ensemble
from mtv.epic.results import read_results, save
from mtv.errors import ResultsError

HELP = "Fuse results files (weights, logits/probabilities); search weights on validation, apply to test."

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "out", None, "Where to write the fused results (.npz, or .pkl in the official layout).", flag_values=FLAGS
)
flags.DEFINE_list(
    "weights", None, "Comma-separated weights, one per results file (normalised to sum 1).", flag_values=FLAGS
)
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
flags.DEFINE_enum("method", "grid", list(ensemble.SEARCH_METHODS), "Weight search method.", flag_values=FLAGS)
flags.DEFINE_string(
    "metric", "all_action_accuracy_at_1", "Epic metric the search maximises.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "grid", 10, "Search resolution: weights are multiples of 1/grid.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_list(
    "apply_to",
    None,
    "Comma-separated test results, one per validation file in the same order: fused with the "
    "searched weights and written to --out.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "val_out", None, "With --apply_to: where to write the fused validation results.", flag_values=FLAGS
)
define_allow_pickle(FLAGS)


def _read_all(paths: list[str]):
    return [read_results(p, allow_pickle=FLAGS.allow_pickle) for p in paths]


def _parse_weights(values: list[str] | None):
    if values is None:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ResultsError(f"--weights must be numbers, got {','.join(values)!r}") from None


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
        fused = ensemble.fuse(_read_all(paths), _parse_weights(FLAGS.weights), fuse=FLAGS.fuse)
        save(FLAGS.out, fused)
        print(f"wrote {FLAGS.out}")
        return 0
    if FLAGS.weights is not None:
        raise ResultsError("--weights and --search exclude each other: --search finds the weights")
    if not FLAGS.annotations:
        raise ResultsError("--search needs --annotations (the validation CSV, e.g. EPIC_100_validation.csv)")
    if apply_to and len(apply_to) != len(paths):
        raise ResultsError(
            f"--apply_to has {len(apply_to)} files but {len(paths)} validation files were given; "
            "give one test file per validation file, in the same order"
        )
    val = _read_all(paths)
    test = _read_all(apply_to) if apply_to else None  # read before searching: fail fast on bad files
    weights, score = ensemble.search_weights(
        val, FLAGS.annotations, method=FLAGS.method, metric=FLAGS.metric, grid=FLAGS.grid, fuse=FLAGS.fuse
    )
    print("weights: " + ",".join(f"{w:.4g}" for w in weights))
    print(f"{FLAGS.metric}: {score:.4f}")
    val_out = FLAGS.val_out if apply_to else FLAGS.out
    if val_out:
        save(val_out, ensemble.fuse(val, weights, fuse=FLAGS.fuse))
        print(f"wrote {val_out}")
    if test is not None:
        save(FLAGS.out, ensemble.fuse(test, weights, fuse=FLAGS.fuse))
        print(f"wrote {FLAGS.out}")
    return 0
