"""Smoke test of the OpenSearch test node: BM25, k-NN (lucene engine), plugins, hybrid search."""
from __future__ import annotations

import os
import uuid

import pytest

pytestmark = pytest.mark.integration

DOCS = [
    ("fox", "the quick brown fox jumps over the fence", [1.0, 0.0, 0.0, 0.0]),
    ("dog", "a lazy dog sleeps all day in the sun", [0.0, 1.0, 0.0, 0.0]),
    ("cell", "plant cells turn light into sugar", [0.0, 0.0, 1.0, 0.0]),
    ("star", "a black hole bends the light of a star", [0.0, 0.0, 0.0, 1.0]),
]


@pytest.fixture(scope="module")
def client(opensearch_url: str):
    from opensearchpy import OpenSearch

    user, password = os.environ.get("CEINDEX_OPENSEARCH_USER"), os.environ.get("CEINDEX_OPENSEARCH_PASSWORD")
    client = OpenSearch(hosts=[opensearch_url], http_auth=(user, password) if user else None,
                        verify_certs=False, ssl_show_warn=False, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def index(client) -> str:
    from opensearchpy import helpers

    name = f"smoke-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name, body={
        "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0}},
        "mappings": {"properties": {
            "text": {"type": "text", "analyzer": "english"},
            "vec": {"type": "knn_vector", "dimension": 4,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
                               "parameters": {"m": 16, "ef_construction": 64}}},
        }},
    })
    ok, errors = helpers.bulk(client, ({"_index": name, "_id": doc_id, "text": text, "vec": vec}
                                       for doc_id, text, vec in DOCS), raise_on_error=False)
    assert (ok, errors) == (len(DOCS), [])
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def _ids(response: dict) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


def test_knn_plugin_is_installed(client) -> None:
    names = {p["component"] for p in client.cat.plugins(format="json")}
    assert "opensearch-knn" in names
    nodes = client.nodes.info(metric="plugins")["nodes"]
    plugins = {p["name"]: p["version"] for node in nodes.values() for p in node["plugins"]}
    assert plugins.get("opensearch-knn", "").startswith("2.19")


def test_bm25_match_ranks_expected_doc_first(client, index: str) -> None:
    response = client.search(index=index, body={"query": {"match": {"text": "sleeping dogs"}}})
    assert _ids(response)[0] == "dog"
    assert response["hits"]["hits"][0]["_score"] > 0


def test_knn_query_returns_nearest_vector_first(client, index: str) -> None:
    response = client.search(index=index, body={
        "size": 3, "query": {"knn": {"vec": {"vector": [0.1, 0.05, 0.9, 0.0], "k": 3}}}})
    assert _ids(response)[0] == "cell"
    scores = [hit["_score"] for hit in response["hits"]["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_hybrid_query_with_normalization_pipeline(client, index: str) -> None:
    """neural-search plugin: `hybrid` query + `normalization-processor` search pipeline."""
    if "opensearch-neural-search" not in {p["component"] for p in client.cat.plugins(format="json")}:
        pytest.skip("SKIPPED LOUDLY: the cluster has no neural-search plugin")
    pipeline = f"smoke-hybrid-{uuid.uuid4().hex[:6]}"
    client.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}", body={
        "phase_results_processors": [{"normalization-processor": {
            "normalization": {"technique": "min_max"},
            "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.5, 0.5]}}}}]})
    try:
        response = client.search(index=index, params={"search_pipeline": pipeline}, body={
            "query": {"hybrid": {"queries": [
                {"match": {"text": "light"}},
                {"knn": {"vec": {"vector": [0.0, 0.0, 1.0, 0.1], "k": 2}}},
            ]}}})
        assert _ids(response)[0] == "cell"  # matches "light" and is the nearest vector
    finally:
        client.transport.perform_request("DELETE", f"/_search/pipeline/{pipeline}")
