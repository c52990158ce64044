"""`ceindex serve`: the HTTP API tested with real HTTP requests against a running uvicorn server (searches on both
backends; request validation, which is the same for both, on the embedded one)."""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ceindex.backends import open_backend
from ceindex.config import OpenSearchConfig, SearchConfig, Settings
from ceindex.data.corpus import corpus_path
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from search_pipeline import SearchPipeline
from search_pipeline.server import create_app
from tests.conftest import ALL_BACKEND_PARAMS, SAMPLE, cluster_url
from tests.serving import serving


def _serve(tiny_ce_dir: Path, home: Path, opensearch_url: str | None = None) -> Iterator[str]:
    """Build the sample corpus into a fresh index (on OpenSearch when a URL is given) and serve it."""
    settings = Settings(index=f"served-{uuid.uuid4().hex[:8]}", home=str(home),
                        encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64),
                        search=SearchConfig(recall_n=10, rerank_top=3, rerank_max_length=64, max_query_chars=200))
    if opensearch_url:
        settings = replace(settings, opensearch=OpenSearchConfig(url=opensearch_url))
    backend = open_backend(settings)
    build_index(backend, load_encoder(settings.encoder), corpus_path(SAMPLE, None), settings.index, settings.build,
                rejects_path=home / "r.jsonl", progress=False)
    backend.close()
    with serving(create_app(SearchPipeline(settings))) as url:
        yield url


@pytest.fixture(scope="module")
def server(tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded-backend server."""
    yield from _serve(tiny_ce_dir, tmp_path_factory.mktemp("serve-home"))


@pytest.fixture(scope="module", params=ALL_BACKEND_PARAMS)
def any_server(request: pytest.FixtureRequest, tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on each backend (the embedded one is ``server`` itself)."""
    if request.param == "embedded":
        yield request.getfixturevalue("server")
        return
    yield from _serve(tiny_ce_dir, tmp_path_factory.mktemp("serve-home"), cluster_url(request, request.param))


def test_healthz_reports_the_index(any_server: str) -> None:
    response = httpx.get(f"{any_server}/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["documents"] == 30 and body["encoder"]["layer"] == 1


def test_search_returns_ranked_hits_with_all_scores(any_server: str) -> None:
    response = httpx.post(f"{any_server}/search", json={"query": "lithium battery charging", "k": 4}, timeout=60)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4]
    first = result["hits"][0]
    assert {"bm25_score", "knn_score", "fused_score", "rerank_score", "title", "text"} <= set(first)
    assert set(result["timings_ms"]) == {"encode", "bm25", "knn", "fusion", "fetch", "rerank"}


def test_batch_of_queries(any_server: str) -> None:
    response = httpx.post(f"{any_server}/search", json={"queries": ["volcano", "honeybee dance"], "k": 2}, timeout=60)
    assert response.status_code == 200
    assert [r["query"] for r in response.json()["results"]] == ["volcano", "honeybee dance"]


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"query": "  "}, 400, "query 0 is empty"),
        ({"query": "x" * 300}, 400, "limit is 200"),
        ({"query": "a", "queries": ["b"]}, 400, "exactly one of"),
        ({}, 400, "exactly one of"),
        ({"queries": []}, 400, "'queries' is empty"),
        ({"query": "a", "k": 0}, 422, "greater than or equal to 1"),
        ({"query": "a", "k": 5000}, 422, "less than or equal to 1000"),
        ({"query": "a", "size": 3}, 422, "Extra inputs are not permitted"),
        ({"query": 5}, 422, "valid string"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(server: str, payload: dict, status: int, fragment: str) -> None:
    response = httpx.post(f"{server}/search", json=payload, timeout=30)
    assert response.status_code == status
    assert fragment in response.text


def test_openapi_description_is_served(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json").json()
    assert "/search" in spec["paths"] and "/healthz" in spec["paths"]
