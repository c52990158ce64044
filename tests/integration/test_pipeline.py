"""The search pipeline's stages and fusion methods on the embedded backend and the real OpenSearch node."""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ceindex.backends import open_backend
from ceindex.config import OpenSearchConfig, SearchConfig, Settings
from ceindex.data.corpus import corpus_path
from ceindex.errors import BackendError, ConfigError, EncoderMismatchError, InputError
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from search_pipeline import SearchPipeline
from ceindex.backends.detect import detect_engine
from tests.conftest import CORE_BACKEND_PARAMS, SAMPLE, cluster_url


@pytest.fixture(scope="module", params=CORE_BACKEND_PARAMS)
def built(request: pytest.FixtureRequest, tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    settings = Settings(index=f"p{uuid.uuid4().hex[:8]}", home=str(home),
                        encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64),
                        search=SearchConfig(recall_n=20, rerank_top=5, rerank_max_length=64))
    url = cluster_url(request, request.param)
    if url:
        settings = replace(settings, opensearch=OpenSearchConfig(url=url))
    backend = open_backend(settings)
    try:
        build_index(backend, load_encoder(settings.encoder), corpus_path(SAMPLE, None), settings.index,
                    settings.build, rejects_path=home / "r.jsonl", progress=False)
    finally:
        backend.close()
    return settings


def _pipeline(settings: Settings, **search) -> SearchPipeline:
    return SearchPipeline(replace(settings, search=replace(settings.search, **search)))


def test_bm25_only_stage(built: Settings) -> None:
    result = _pipeline(built, knn=False, rerank=False).search("lithium ions battery charges", k=5)
    assert result.hits[0].id == "d21"
    assert [h.bm25_rank for h in result.hits] == [h.rank for h in result.hits]
    assert all(h.knn_rank is None and h.rerank_score is None for h in result.hits)
    assert result.timings_ms["bm25"] > 0 and result.timings_ms["encode"] == 0


def test_knn_only_stage_orders_by_cosine(built: Settings) -> None:
    result = _pipeline(built, bm25=False, rerank=False).search("black hole gravity light", k=10)
    scores = [h.knn_score for h in result.hits]
    assert len(result.hits) == 10 and scores == sorted(scores, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in scores)
    assert result.timings_ms["encode"] > 0 and result.timings_ms["knn"] > 0


@pytest.mark.parametrize("fusion", ["rrf", "minmax"])
def test_fusion_scores_follow_the_recall_lists(built: Settings, fusion: str) -> None:
    weights = (1.0, 1.0) if fusion == "rrf" else (2.0, 0.5)
    pipeline = _pipeline(built, fusion=fusion, rerank=False, bm25_weight=weights[0], knn_weight=weights[1])
    query = "carbon dioxide warms the planet"
    bm25 = {h.id: h for h in pipeline.backend.bm25(built.index, [query], 20)[0]}
    knn_hits = {h.id: h for h in pipeline.backend.knn(built.index, pipeline.query_encoder.encode([query]), 20)[0]}
    hits = pipeline.search(query, k=20).hits
    for hit in hits:
        if fusion == "rrf":
            expected = sum(w / (60 + r.rank) for w, r in zip(weights, (bm25.get(hit.id), knn_hits.get(hit.id))) if r)
        else:  # weighted mean of min-max normalised scores; the minimum maps to 0.001, a missing doc to 0
            expected = 0.0
            for weight, run in zip(weights, (bm25, knn_hits)):
                if hit.id in run:
                    low, high = min(h.score for h in run.values()), max(h.score for h in run.values())
                    expected += weight * (((run[hit.id].score - low) / (high - low)) or 0.001)
            expected /= sum(weights)
        assert hit.fused_score == pytest.approx(expected, rel=2e-4, abs=2e-5)
    assert [h.fused_score for h in hits] == sorted((h.fused_score for h in hits), reverse=True)


@pytest.mark.parametrize("fusion", ["rrf", "minmax"])
def test_server_and_client_fusion_rank_alike(built: Settings, fusion: str) -> None:
    """OpenSearch with neural-search fuses server-side (hybrid query + ceindex's search pipeline); same ranking."""
    server = _pipeline(built, fusion=fusion, rerank=False, server_fusion="auto")
    client = _pipeline(built, fusion=fusion, rerank=False, server_fusion="off")
    assert not client.uses_server_fusion
    engine = detect_engine(built.opensearch) if built.opensearch.url else None
    if engine is None or (engine.name, engine.major) != ("opensearch", 2):  # only the 2.19 node has neural-search
        assert not server.uses_server_fusion
        with pytest.raises(ConfigError, match="server_fusion is 'on'"):
            _pipeline(built, server_fusion="on").search("x")
        return
    assert server.uses_server_fusion  # the test node carries the neural-search plugin
    for query in ("carbon dioxide warms the planet", "how do plants make sugar", "stars collapse"):
        by_server = server.search(query, k=15).hits
        by_client = client.search(query, k=15).hits
        assert [h.id for h in by_server] == [h.id for h in by_client]
        assert [h.fused_score for h in by_server] == pytest.approx([h.fused_score for h in by_client], rel=2e-4, abs=2e-5)


def test_rerank_reorders_the_top_candidates(built: Settings) -> None:
    pipeline = _pipeline(built, rerank=True, rerank_top=5)
    result = pipeline.search("how do bees find flowers", k=8)
    head, tail = result.hits[:5], result.hits[5:]
    assert all(h.rerank_score is not None for h in head)
    assert [h.rerank_score for h in head] == sorted((h.rerank_score for h in head), reverse=True)
    assert {h.fused_rank for h in head} == {1, 2, 3, 4, 5}
    # k=8 reaches the second window of 5 (fused 6-10): re-ranked in itself, below the first (pages stay stable)
    assert all(h.rerank_score is not None for h in tail)
    assert [h.rerank_score for h in tail] == sorted((h.rerank_score for h in tail), reverse=True)
    assert {h.fused_rank for h in tail} <= {6, 7, 8, 9, 10}
    direct = pipeline.reranker.score([("how do bees find flowers", f"{head[0].title} {head[0].text}")])
    assert head[0].rerank_score == pytest.approx(float(direct[0]), rel=1e-4, abs=1e-5)
    assert result.timings_ms["rerank"] > 0


def test_search_many_equals_single_searches(built: Settings) -> None:
    pipeline = _pipeline(built, rerank=False)
    queries = ["volcano magma", "sleep and memory"]
    many = pipeline.search_many(queries, k=5)
    assert [[h.id for h in r.hits] for r in many] == [[h.id for h in pipeline.search(q, k=5).hits] for q in queries]


def test_bad_inputs_are_clear_errors(built: Settings, tiny_ce_dir: Path) -> None:
    pipeline = _pipeline(built)
    with pytest.raises(InputError, match="query 0 is empty"):
        pipeline.search("   ")
    with pytest.raises(InputError, match="k must be an integer between 1 and 1000"):
        pipeline.search("x", k=0)
    with pytest.raises(InputError, match="limit is 2000"):
        pipeline.search("word " * 500)
    with pytest.raises(BackendError, match="no .*index.* named 'missing-index'"):
        SearchPipeline(replace(built, index="missing-index"))
    with pytest.raises(ConfigError, match="both BM25 and k-NN recall are switched off"):
        _pipeline(built, bm25=False, knn=False)
    other = load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=2, max_length=64))
    with pytest.raises(EncoderMismatchError, match="layer: index has 1, query encoder has 2"):
        SearchPipeline(built, query_encoder=other)


def test_without_text_same_ranking_and_no_fetch(built: Settings) -> None:
    pipeline = _pipeline(built, rerank=False)
    full = pipeline.search_many(["volcano magma"], k=5)[0]
    bare = pipeline.search_many(["volcano magma"], k=5, include_text=False)[0]
    assert [h.id for h in bare.hits] == [h.id for h in full.hits]
    assert all(h.text == "" for h in bare.hits) and all(h.text for h in full.hits)
