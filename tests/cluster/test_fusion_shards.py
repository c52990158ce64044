"""Server-side (neural-search 2.19.1 hybrid query + search pipeline) vs ceindex's client-side fusion on the real
cluster, on the same 400 SciFact documents indexed with 1 primary shard and with the compose profile's 3.

Measured (and asserted, so a plugin that changes it fails here and `--server-fusion auto` gets revisited): on one
shard both RRF and min-max give ceindex's ranking (up to ties); on three shards both differ in the top 10 of most
queries, because neural-search fuses per shard (RRF ranks per shard: neural-search #1703; min-max over the union of
the shards' top lists). So `auto` fuses in ceindex on a multi-shard index, and says why in the log.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import pytest

from ceindex.backends import open_backend
from ceindex.backends.base import Hit
from ceindex.config import SearchConfig, Settings
from ceindex.models import EncoderConfig, load_encoder
from ceindex.testing.opensearch_cluster import OpenSearchCluster
from search_pipeline import SearchPipeline, fuse_recall
from tests.cluster.helpers import PROFILE, build_corpus, cluster_settings
from tests.conftest import FIXTURE_CE, SCIFACT, require_shared

pytestmark = pytest.mark.cluster
logger = logging.getLogger(__name__)

DOCS, QUERIES, DEPTH, TOP = 400, 40, 100, 10
METHODS = ("rrf", "minmax")


@pytest.fixture(scope="module")
def indexes(_session_opensearch_cluster: OpenSearchCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[int, Settings]:
    """{primary shards: settings} for the same documents built with 1 shard and with the profile's shards."""
    tmp = tmp_path_factory.mktemp("fusion")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("\n".join(require_shared(SCIFACT / "corpus.jsonl").read_text().splitlines()[:DOCS]) + "\n")
    encoder = load_encoder(EncoderConfig(model=str(require_shared(FIXTURE_CE)), layer=1, max_length=96, batch_size=32))
    built = {}
    for shards in sorted({1, PROFILE.shards}):
        settings = cluster_settings(_session_opensearch_cluster, tmp, shards=shards, encode_batch_docs=100,
                                    chunk_docs=100)
        summary = build_corpus(settings, encoder, corpus, tmp)
        assert summary.published and summary.indexed == DOCS
        built[shards] = settings
    return built


@pytest.fixture(scope="module")
def queries() -> list[str]:
    lines = require_shared(SCIFACT / "queries.jsonl").read_text().splitlines()[:QUERIES]
    return [json.loads(line)["text"] for line in lines]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)  # the server fuses in float32


def same_ranking(client: list[Hit], server: list[Hit], depth: int) -> bool:
    """The same documents at the same fused scores in the top ``depth`` (so the same order up to ties); a document
    in only one list must tie with that list's last score (a tie cut at the boundary)."""
    mine, theirs = ({h.id: h.score for h in hits[:depth]} for hits in (client, server))
    if any(not _close(mine[d], theirs[d]) for d in mine.keys() & theirs.keys()):
        return False
    for only, scores in ((mine.keys() - theirs.keys(), mine), (theirs.keys() - mine.keys(), theirs)):
        cutoff = min(scores.values(), default=0.0)
        if any(not _close(scores[d], cutoff) for d in only):
            return False
    return True


def compare(settings: Settings, queries: list[str], method: str) -> dict[str, float]:
    """Per method: how many queries rank differently in the top 10 and top 100, and the mean top-10 overlap."""
    encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=1, max_length=96, batch_size=32))
    vectors = encoder.encode(queries)
    backend = open_backend(settings)
    try:
        bm25 = backend.bm25(settings.index, queries, DEPTH)
        knn = backend.knn(settings.index, vectors, DEPTH)
        server = backend.hybrid(settings.index, queries, vectors, DEPTH, method, (1.0, 1.0), 60)
    finally:
        backend.close()
    client = [fuse_recall(b, k, SearchConfig(fusion=method)) for b, k in zip(bm25, knn)]
    overlap = [len({h.id for h in c[:TOP]} & {h.id for h in s[:TOP]}) / TOP for c, s in zip(client, server)]
    return {"differ_top10": sum(not same_ranking(c, s, TOP) for c, s in zip(client, server)),
            "differ_top100": sum(not same_ranking(c, s, DEPTH) for c, s in zip(client, server)),
            "mean_overlap_top10": round(sum(overlap) / len(overlap), 3)}


@pytest.mark.parametrize("method", METHODS)
def test_one_shard_server_fusion_ranks_like_ceindex(opensearch_cluster: OpenSearchCluster, indexes, queries,
                                                    method: str) -> None:
    figures = compare(indexes[1], queries, method)
    logger.info("1 shard, %s: %s", method, figures)
    assert figures == {"differ_top10": 0, "differ_top100": 0, "mean_overlap_top10": 1.0}


@pytest.mark.parametrize("method", METHODS)
def test_three_shards_server_fusion_ranks_differently(opensearch_cluster: OpenSearchCluster, indexes, queries,
                                                      method: str) -> None:
    figures = compare(indexes[PROFILE.shards], queries, method)
    logger.info("%d shards, %s: %s", PROFILE.shards, method, figures)
    assert figures["differ_top10"] >= QUERIES // 2, figures  # measured: 40 of 40 for both methods


def _pipeline(settings: Settings, **search: object) -> SearchPipeline:
    return SearchPipeline(replace(settings, search=replace(settings.search, rerank=False, **search)))


@pytest.mark.parametrize("method", METHODS)
def test_auto_fuses_in_ceindex_on_a_multi_shard_index_and_says_why(
        opensearch_cluster: OpenSearchCluster, indexes, queries, method: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="search_pipeline.pipeline"):
        auto = _pipeline(indexes[PROFILE.shards], fusion=method, server_fusion="auto")
        assert not auto.uses_server_fusion
    assert f"has {PROFILE.shards} primary shards" in caplog.text and "#1703" in caplog.text
    client = _pipeline(indexes[PROFILE.shards], fusion=method, server_fusion="off")
    for query in queries[:5]:  # auto answers exactly what client-side fusion answers
        assert [h.id for h in auto.search(query, k=TOP).hits] == [h.id for h in client.search(query, k=TOP).hits]
    assert _pipeline(indexes[1], fusion=method, server_fusion="auto").uses_server_fusion  # one shard: in OpenSearch


def test_on_still_fuses_in_the_cluster_but_warns(opensearch_cluster: OpenSearchCluster, indexes,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="search_pipeline.pipeline"):
        assert _pipeline(indexes[PROFILE.shards], server_fusion="on").uses_server_fusion
    assert "--server-fusion on" in caplog.text and "primary shards" in caplog.text
