from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ceindex.errors import ConfigError, InputError
from ceindex.evaluation.report import score_runs, write_report
from ceindex.evaluation.runner import SystemRun, ranked_scores
from ceindex.evaluation.systems import parse_systems
from ceindex.data.beir import read_qrels_file
from ceindex.evaluation.topics import load_topics

QRELS = {"q1": {"d1": 2, "d3": 1}, "q2": {"d9": 1}}
# q1 ranking: d2 (non-rel), d1 (rel 2), d4, d3 (rel 1); q2 ranking: d9 first
RUN_A = SystemRun("a", {"q1": ranked_scores(["d2", "d1", "d4", "d3"]), "q2": ranked_scores(["d9", "d5"])})
# system b finds nothing relevant for q2 and has no result at all for... q1 only d3 at rank 1
RUN_B = SystemRun("b", {"q1": ranked_scores(["d3"])})


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_metrics_match_hand_computation() -> None:
    report = score_runs(QRELS, [RUN_A, RUN_B], baseline="a")
    ideal_q1 = _dcg([2, 1])  # ranx uses gain = relevance (jarvelin=False)
    ndcg_q1 = _dcg([0, 2, 0, 1]) / ideal_q1
    a = report.scores["a"]
    assert a["ndcg@10"] == pytest.approx((ndcg_q1 + 1.0) / 2, abs=1e-6)
    assert a["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert a["hit_rate@10"] == pytest.approx(1.0)
    assert a["recall@100"] == pytest.approx(1.0)
    assert a["map"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1.0) / 2)
    b = report.scores["b"]
    assert b["ndcg@10"] == pytest.approx((_dcg([1]) / ideal_q1 + 0.0) / 2, abs=1e-6)  # q2 missing: scores 0
    assert b["hit_rate@10"] == pytest.approx(0.5)
    assert b["recall@100"] == pytest.approx((1 / 2 + 0) / 2)
    assert set(report.p_values) == {"b"} and set(report.p_values["b"]) == set(a)


def test_report_files(tmp_path: Path) -> None:
    report = score_runs(QRELS, [RUN_A, RUN_B], baseline="a", provenance={"qrels_sha256": "x"})
    paths = write_report(report, [RUN_A, RUN_B], tmp_path)
    data = json.loads(Path(paths["json"]).read_text())
    assert data["baseline"] == "a" and data["provenance"]["qrels_sha256"] == "x"
    assert Path(paths["runs"], "a.trec").read_text().splitlines()[0] == "q1 Q0 d2 1 4.000000 a"
    assert Path(paths["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in Path(paths["html"]).read_text()
    assert "| a (baseline) |" in report.markdown()


def test_topics_leave_out_unjudged_queries(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "one"}\n{"_id": "q2", "text": "two"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    topics = load_topics(tmp_path, "test")
    assert topics.queries == {"q1": "one"} and topics.unjudged == ["q2"]
    assert len(topics.qrels_sha256) == 64


def test_trec_qrels_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 2\nq1 0 d2 0\n")
    assert read_qrels_file(path) == {"q1": {"d1": 2, "d2": 0}}
    path.write_text("q1 0 d1 high\n")
    with pytest.raises(InputError, match="line 1: score 'high' is not a number"):
        read_qrels_file(path)


def test_system_names() -> None:
    systems = parse_systems("bm25, hybrid-rrf+rerank")
    assert [s.name for s in systems] == ["bm25", "hybrid-rrf+rerank"]
    assert systems[0].search == {"bm25": True, "knn": False, "rerank": False}
    assert systems[1].search["rerank"] is True and systems[1].search["fusion"] == "rrf"
    with pytest.raises(ConfigError, match="unknown system 'dense'"):
        parse_systems("dense")
    with pytest.raises(ConfigError, match="twice"):
        parse_systems("bm25,bm25")
