"""score_runs pads runs with ranx's make_comparable; the scores must equal the hand-written placeholder padding
it replaced (issue 12), and the TREC files keep their exact format."""
from __future__ import annotations

import json
from pathlib import Path

from ceindex.evaluation.report import METRICS, comparable_run, score_runs, write_report
from ceindex.evaluation.runner import SystemRun, ranked_scores

QRELS = {"q1": {"d1": 2, "d3": 1}, "q2": {"d9": 1}, "q3": {"d7": 1}}
RUNS = [
    SystemRun("all", {"q1": ranked_scores(["d2", "d1", "d4", "d3"]), "q2": ranked_scores(["d9", "d5"]),
                      "q3": ranked_scores(["d7"])}),
    SystemRun("missing", {"q1": ranked_scores(["d3"])}),
    SystemRun("empty", {"q1": ranked_scores(["d1"]), "q2": {}, "q3": {}}),
    SystemRun("unjudged", {"q1": ranked_scores(["d3", "d1"]), "zz": ranked_scores(["d1"]),
                           "q3": ranked_scores(["d8", "d7"])}),
    SystemRun("all-empty", {"q1": {}, "q2": {}}),
    SystemRun("nothing", {}),
]


def _placeholder_padded(runs: list[SystemRun]) -> dict:
    """What score_runs computed before: each judged query, an empty one holding a non-relevant placeholder."""
    from ranx import Qrels, Run, compare

    padded = [Run({q: r.run.get(q) or {"__no_result__": 0.0} for q in QRELS}, name=r.name) for r in runs]
    return compare(Qrels(QRELS), padded, metrics=list(METRICS), max_p=0.05, stat_test="student",
                   rounding_digits=6).to_dict()


def _as_json(value: object) -> str:  # NaN-aware equality (a p-value of two equal runs is NaN)
    return json.dumps(value, sort_keys=True, default=float)


def test_make_comparable_scores_like_the_placeholder_padding() -> None:
    from ranx import Qrels, compare

    qrels = Qrels(QRELS)
    ours = compare(qrels, [comparable_run(r, qrels) for r in RUNS], metrics=list(METRICS), max_p=0.05,
                   stat_test="student", rounding_digits=6).to_dict()
    assert _as_json(ours) == _as_json(_placeholder_padded(RUNS))
    report = score_runs(QRELS, RUNS, baseline="all")
    assert report.scores["nothing"] == {m: 0.0 for m in METRICS}
    assert report.scores["missing"]["hit_rate@10"] == report.scores["empty"]["hit_rate@10"] == 1 / 3


def test_comparable_run_holds_exactly_the_judged_queries() -> None:
    from ranx import Qrels

    run = comparable_run(RUNS[3], Qrels(QRELS))
    assert sorted(run.keys()) == ["q1", "q2", "q3"] and dict(run["q2"]) == {}


def test_trec_files_keep_their_format(tmp_path: Path) -> None:
    tie = SystemRun("t+x", {"q2": {"b": 1.5, "a": 1.5, "c": 2.25}, "q1": {}, "q3": {"d7": 1.0}})
    report = score_runs(QRELS, [RUNS[0], tie], baseline="all")
    paths = write_report(report, [RUNS[0], tie], tmp_path)
    text = Path(paths["runs"], "t_plus_x.trec").read_text(encoding="utf-8")
    # queries in run order, ties in run order, 6 decimals, every line ends with a newline
    assert text == ("q2 Q0 c 1 2.250000 t+x\nq2 Q0 b 2 1.500000 t+x\nq2 Q0 a 3 1.500000 t+x\n"
                    "q3 Q0 d7 1 1.000000 t+x\n")
