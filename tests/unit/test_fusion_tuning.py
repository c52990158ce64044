"""``ceindex eval --tune-fusion-on``: the tuned setting is what search and serve return, on hand-made recall lists.

The recall lists below stand in for an index: a hand-made backend hands the real ``SearchPipeline`` these BM25
scores and k-NN cosines, so the pipeline (its fusion step included) is the one search and serve run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import search_pipeline
from ceindex.backends import Hit
from ceindex.backends.base import IndexInfo
from ceindex.config import OpenSearchConfig, SearchConfig, Settings, load_settings
from ceindex.errors import ConfigError
from ceindex.evaluation.pipeline_eval import EvalRequest, evaluate
from ceindex.evaluation.tuning import FusionChoice, StageLists, rank_with, score_ranking, tune_fusion
from ceindex.models.base import EncoderDescription
from search_pipeline import SearchPipeline

# Five queries. In q0 and q2 BM25 matches a single, irrelevant document: serving's min-max (OpenSearch's) maps a
# list whose scores are all equal to 1, so that document competes with k-NN's top hits unless k-NN weighs more;
# ranx's min-max maps it to 0, so tuning with ranx (the old code) sees no cost in a high BM25 weight and picks
# BM25 0.9 / k-NN 0.1, which serves nDCG@10 0.638 where 0.723 is reachable. Rank-derived scores (n, n-1, ...)
# pick yet another weight (0.45 / 0.55).
BM25 = {
    "q0": [("d04", 3.4)],
    "q1": [("d10", 14.4), ("d15", 8.8), ("d13", 8.6), ("d12", 5.2)],
    "q2": [("d23", 7.0)],
    "q3": [("d33", 10.3), ("d32", 9.7), ("d35", 7.2), ("d34", 5.9), ("d30", 3.5)],
    "q4": [("d43", 11.7), ("d40", 10.2), ("d42", 6.7), ("d44", 6.2), ("d41", 4.4)],
}
KNN = {
    "q0": [("d05", 0.76), ("d01", 0.58), ("d03", 0.47), ("d04", 0.4), ("d02", 0.29)],
    "q1": [("d12", 0.75), ("d13", 0.69), ("d14", 0.64), ("d10", 0.55), ("d11", 0.24)],
    "q2": [("d24", 0.76), ("d21", 0.68), ("d20", 0.43), ("d22", 0.38), ("d25", 0.33)],
    "q3": [("d35", 0.84), ("d34", 0.82), ("d32", 0.58), ("d30", 0.43), ("d33", 0.11)],
    "q4": [("d44", 0.81), ("d43", 0.79), ("d41", 0.74), ("d45", 0.31), ("d42", 0.24)],
}
QRELS = {"q0": {"d01": 1, "d05": 1}, "q1": {"d10": 1, "d14": 1}, "q2": {"d24": 1}, "q3": {"d30": 1},
         "q4": {"d40": 1}}
ENCODER = EncoderDescription(kind="ce-layer", model="hand-made", weights_sha256="0" * 64, dims=1, layer=0,
                             input_mode="self-pair")


def _hits(pairs: list[tuple[str, float]]) -> list[Hit]:
    return [Hit(doc, score, rank) for rank, (doc, score) in enumerate(pairs, start=1)]


class HandMadeBackend:
    """The parts of the Backend contract the pipeline calls, answering with the lists above (query text = qid)."""

    def __init__(self, bm25: dict[str, list], knn: dict[str, list]) -> None:
        self.lists = {"bm25": bm25, "knn": knn}
        self.qids = sorted(knn)

    def info(self, index: str) -> IndexInfo:
        return IndexInfo(name=index, physical=index, encoder=ENCODER, count=30)

    def server_fusion(self, method: str, weights: Any, rrf_k: int) -> bool:
        return False

    def bm25(self, index: str, queries: list[str], n: int, **where: Any) -> list[list[Hit]]:
        return [_hits(self.lists["bm25"][q][:n]) for q in queries]

    def knn(self, index: str, vectors: np.ndarray, n: int, ef_search: int = 100, **where: Any) -> list[list[Hit]]:
        return [_hits(self.lists["knn"][self.qids[int(v[0])]][:n]) for v in vectors]

    def fetch(self, index: str, ids: list[str]) -> dict:
        return {}

    def close(self) -> None:
        pass


class HandMadeEncoder:
    def __init__(self, qids: list[str]) -> None:
        self.qids = qids

    def describe(self) -> EncoderDescription:
        return ENCODER

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[float(self.qids.index(t))] for t in texts], dtype=np.float32)


def _pipeline(settings: Settings, bm25: dict = BM25, knn: dict = KNN) -> SearchPipeline:
    backend = HandMadeBackend(bm25, knn)
    return SearchPipeline(settings, backend, query_encoder=HandMadeEncoder(backend.qids))  # type: ignore[arg-type]


def _beir(folder: Path, qrels: dict[str, dict[str, int]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in qrels))
    rows = "".join(f"{q}\t{d}\t{r}\n" for q, docs in qrels.items() for d, r in docs.items())
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def _served(pipeline: SearchPipeline, changes: dict[str, Any], k: int = 10) -> dict[str, list[str]]:
    served = pipeline.with_search(**changes, rerank=False)
    return {q: [hit.id for hit in served.search(q, k=k).hits] for q in sorted(KNN)}


def _evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bm25: dict = BM25, knn: dict = KNN,
              qrels: dict = QRELS, settings: Settings | None = None, **request: Any) -> Any:
    monkeypatch.setattr(search_pipeline, "SearchPipeline", lambda s: _pipeline(s, bm25, knn))
    data = _beir(tmp_path / "data", qrels)
    return evaluate(settings or Settings(), EvalRequest(data_dir=data, split="train", systems="bm25",
                                                        tune_split="train", depth=10, progress=False, **request), None)


def test_the_tuned_fusion_scores_what_search_serves_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuned row (served by the pipeline with the tuned settings) reaches the best nDCG@10 that serving can give
    on the tuning split. Failed before: tuning with ranx's min-max on the raw scores picked BM25 0.9 / k-NN 0.1,
    which served 0.638 (the best min-max weights serve 0.723)."""
    report, _ = _evaluate(tmp_path, monkeypatch)
    tuned = next(name for name in report.systems if name.endswith("tuned"))
    pipeline = _pipeline(Settings())
    grid = [{"fusion": "minmax", "bm25_weight": round(1 - w / 10, 1), "knn_weight": w / 10} for w in range(11)]
    best_served = max(score_ranking(QRELS, _served(pipeline, changes)) for changes in grid)
    assert best_served == pytest.approx(0.7229, abs=1e-4)
    assert report.scores[tuned]["ndcg@10"] == pytest.approx(best_served, abs=1e-9)
    # the tuner's own number is the served one, and it names the setting it serves
    assert report.fusion_tuning["served_score"] == pytest.approx(report.scores[tuned]["ndcg@10"], abs=1e-9)
    assert report.fusion_tuning["search"] == {"bm25": True, "knn": True, "fusion": "minmax", "bm25_weight": 0.4,
                                              "knn_weight": 0.6, "rrf_k": 60}


def test_raw_and_rank_derived_scores_tune_to_different_weights_and_the_tuners_ranking_is_served() -> None:
    pipeline = _pipeline(Settings())
    raw = StageLists({q: _hits(v) for q, v in BM25.items()}, {q: _hits(v) for q, v in KNN.items()}, 100)
    by_rank = StageLists(*({q: [Hit(h.id, float(len(hits) - h.rank + 1), h.rank) for h in hits]
                            for q, hits in stage.items()} for stage in (raw.bm25, raw.knn)), 100)
    tuned = tune_fusion(QRELS, raw, split="train", depth=10)
    rank_tuned = tune_fusion(QRELS, by_rank, split="train", depth=10)
    assert (tuned.best_minmax.bm25_weight, tuned.best_minmax.knn_weight) == (0.4, 0.6)
    assert (rank_tuned.best_minmax.bm25_weight, rank_tuned.best_minmax.knn_weight) == (0.45, 0.55)
    assert tuned.served == tuned.best_minmax and tuned.knn_helps
    # per query, the ranking the tuner scored is the one the pipeline returns with the tuned settings
    assert rank_with(raw, tuned.served, 10) == _served(pipeline, tuned.served.search_changes())
    # and so for every setting of the grid (RRF's k included)
    for row in tuned.tried:
        choice = FusionChoice(row["fusion"], row["bm25_weight"], row["knn_weight"], row["rrf_k"])
        assert score_ranking(QRELS, _served(pipeline, choice.search_changes())) == pytest.approx(row["score"])
    # the rank-derived weights serve less than they promised on the raw scores
    served_rank_tuned = score_ranking(QRELS, _served(pipeline, rank_tuned.best_minmax.search_changes()))
    assert served_rank_tuned < tuned.served_score - 0.01


def test_write_config_loads_as_settings_and_search_serves_the_tuned_fusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = tmp_path / "out" / "tuned.yaml"
    base = Settings(index="hand", opensearch=OpenSearchConfig(url="https://ops:s3cret@search.example:9200"),
                    search=SearchConfig(rerank_top=20))
    report, paths = _evaluate(tmp_path, monkeypatch, settings=base, write_config=written)
    assert paths["config"] == str(written)
    text = written.read_text()
    assert "s3cret" not in text and "ops" not in text  # credentials come from the environment, never a file
    assert "k-NN helps on train" in text
    settings = load_settings(written)
    assert settings.index == "hand" and settings.opensearch.url == "https://search.example:9200"
    assert (settings.search.fusion, settings.search.bm25_weight, settings.search.knn_weight) == ("minmax", 0.4, 0.6)
    assert settings.search.rerank_top == 20  # untuned keys kept as the eval ran with them
    assert (settings.encoder.kind, settings.encoder.model, settings.encoder.layer) == ("ce-layer", "hand-made", 0)
    pipeline = _pipeline(settings)
    served = {q: [h.id for h in pipeline.with_search(rerank=False).search(q, k=10).hits] for q in sorted(KNN)}
    assert score_ranking(QRELS, served) == pytest.approx(report.fusion_tuning["served_score"], abs=1e-9)


def test_the_report_says_when_knn_does_not_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BM25 ranks every relevant document first, just ahead of the next; k-NN ranks them last: any k-NN weight
    (0.05 or more) or RRF puts the next one first."""
    bm25 = {q: [(f"{q}-rel", 9.0), (f"{q}-a", 8.9), (f"{q}-b", 1.0)] for q in ("q0", "q1", "q2")}
    knn = {q: [(f"{q}-a", 0.9), (f"{q}-b", 0.8), (f"{q}-c", 0.7), (f"{q}-rel", 0.1)] for q in ("q0", "q1", "q2")}
    qrels = {q: {f"{q}-rel": 1} for q in ("q0", "q1", "q2")}
    written = tmp_path / "tuned.yaml"
    report, _ = _evaluate(tmp_path, monkeypatch, bm25=bm25, knn=knn, qrels=qrels, write_config=written)
    tuning = report.fusion_tuning
    assert not tuning["knn_helps"] and tuning["bm25_alone"] == pytest.approx(1.0)
    assert tuning["best_hybrid_score"] < 1.0 and tuning["best_hybrid"]["knn_weight"] > 0
    assert tuning["verdict"].startswith(
        f"k-NN does not help on train: BM25 alone 1.000 vs best hybrid {tuning['best_hybrid_score']:.3f}")
    assert "paired t-test p = " in tuning["verdict"]
    assert tuning["verdict"].endswith("served: BM25 alone (search.knn: false)")
    assert tuning["verdict"] in report.markdown()
    assert report.scores["tuned"] == report.scores["bm25"]
    assert load_settings(written).search.knn is False


def test_write_config_needs_tuning(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tune-fusion-on"):
        evaluate(Settings(), EvalRequest(data_dir=tmp_path, systems="bm25", write_config=tmp_path / "x.yaml"), None)
    with pytest.raises(ConfigError, match="is a folder"):
        evaluate(Settings(), EvalRequest(data_dir=tmp_path, systems="bm25", tune_split="train",
                                         write_config=tmp_path), None)


def test_the_verdict_is_in_every_report_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ceindex.evaluation.report import write_report
    from ceindex.evaluation.runner import SystemRun

    report, _ = _evaluate(tmp_path, monkeypatch)
    paths = write_report(report, [SystemRun(name, {}) for name in report.systems], tmp_path / "report")
    verdict = report.fusion_tuning["verdict"]
    assert verdict.startswith("k-NN helps on train: best hybrid 0.723 (minmax, weights BM25 0.4 / k-NN 0.6) vs BM25 "
                              "alone ")
    assert json.loads(Path(paths["json"]).read_text())["fusion_tuning"]["verdict"] == verdict
    assert verdict in Path(paths["markdown"]).read_text() and verdict in Path(paths["html"]).read_text()


def test_paired_p_value() -> None:
    from ceindex.evaluation.tuning import paired_p_value

    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    first = {"a": ["x"], "b": ["y"]}
    assert paired_p_value(qrels, first, {"a": ["z", "x"], "b": ["z", "y"]}) == 0.0  # the same loss on every query
    assert paired_p_value(qrels, first, first) is None  # no difference anywhere: no test (and no NaN in report.json)
