"""`mtv submission`: write the Epic-Kitchens-100 challenge zip (test.json) from fused test results.

By default `test.json` is byte for byte what the official `create_submission.py` writes for the same scores
(verb and noun scores only); --actions adds the top-100 "verb,noun" action scores. The results must cover
the 13,092 test segments: with --test_timestamps exactly the ids of that CSV, without it that many segments.
"""

from __future__ import annotations

from absl import flags

from mtv.cli.common_flags import define_allow_pickle
from mtv.epic import scoring as epic
from mtv.epic.results import read_results
from mtv.errors import ResultsError

HELP = "Write the Epic-Kitchens-100 action recognition submission zip from (fused) test results."

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "The submission zip to write.", flag_values=FLAGS)
for _name, _what in (("pt", "pre-training"), ("tl", "training labels"), ("td", "training data")):
    flags.DEFINE_integer(
        f"sls_{_name}",
        None,
        f"Supervision level, {_what} (0-5, github.com/epic-kitchens/sls).",
        lower_bound=0,
        upper_bound=5,
        flag_values=FLAGS,
    )
    flags.mark_flag_as_required(f"sls_{_name}", flag_values=FLAGS)
flags.DEFINE_enum(
    "challenge", "action_recognition", list(epic.CHALLENGES), "Challenge name.", flag_values=FLAGS
)
flags.DEFINE_string(
    "test_timestamps",
    None,
    "EPIC_100_test_timestamps.csv: the results must cover exactly its segments (without it: 13,092 segments).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "actions",
    False,
    "Also write the top-100 'verb,noun' action scores per segment (the official writer does not).",
    flag_values=FLAGS,
)
define_allow_pickle(FLAGS)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise ResultsError("give exactly one results file: mtv submission FUSED.npz --out submission.zip ...")
    if not FLAGS.out:
        raise ResultsError("--out is required (the submission zip to write)")
    results = read_results(argv[1], allow_pickle=FLAGS.allow_pickle)
    timestamps = FLAGS.test_timestamps
    expected = epic.read_narration_ids(timestamps) if timestamps else None
    path = epic.make_submission(
        results,
        FLAGS.out,
        sls_pt=FLAGS.sls_pt,
        sls_tl=FLAGS.sls_tl,
        sls_td=FLAGS.sls_td,
        challenge=FLAGS.challenge,
        include_actions=FLAGS.actions,
        expected_ids=expected,
    )
    print(f"wrote {path} ({len(results)} segments)")
    return 0
