"""`mtv epic-score`: the official Epic-Kitchens-100 validation metrics of a results file."""

from __future__ import annotations

import json

from absl import flags

from mtv.cli.common_flags import define_allow_pickle
from mtv.epic import scoring as epic
from mtv.epic.results import read_results
from mtv.errors import ResultsError

HELP = "Score results on Epic-Kitchens-100 validation with the official metric names."

FLAGS = flags.FlagValues()
flags.DEFINE_string("annotations", None, "EPIC_100_validation.csv", flag_values=FLAGS)
flags.mark_flag_as_required("annotations", flag_values=FLAGS)
flags.DEFINE_string(
    "tail_verb_classes_csv", None, "EPIC_100_tail_verbs.csv (for tail_* metrics).", flag_values=FLAGS
)
flags.DEFINE_string(
    "tail_noun_classes_csv", None, "EPIC_100_tail_nouns.csv (for tail_* metrics).", flag_values=FLAGS
)
flags.DEFINE_string(
    "unseen_participant_ids_csv",
    None,
    "EPIC_100_unseen_participant_ids_validation.csv (for unseen_* metrics).",
    flag_values=FLAGS,
)
flags.DEFINE_bool("json", False, "Print the metrics as one JSON object.", flag_values=FLAGS)
define_allow_pickle(FLAGS)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise ResultsError("give exactly one results file: mtv epic-score RESULTS --annotations CSV")
    results = read_results(argv[1], allow_pickle=FLAGS.allow_pickle)
    metrics = epic.compute_metrics(
        results,
        FLAGS.annotations,
        tail_verb_classes_csv=FLAGS.tail_verb_classes_csv,
        tail_noun_classes_csv=FLAGS.tail_noun_classes_csv,
        unseen_participant_ids_csv=FLAGS.unseen_participant_ids_csv,
    )
    print(json.dumps(metrics, indent=2) if FLAGS.json else epic.metrics_table(metrics))
    return 0
