"""The hybrid search pipelines ceindex creates through opensearch-py's ``client.search_pipeline`` (issue 12)."""
from __future__ import annotations

import pytest

from ceindex.backends.opensearch import OpenSearchBackend
from ceindex.config import OpenSearchConfig
from ceindex.errors import BackendError

pytestmark = pytest.mark.integration


@pytest.fixture()
def backend(opensearch_url: str):
    backend = OpenSearchBackend(OpenSearchConfig(url=opensearch_url))
    yield backend
    backend.close()


def test_pipelines_are_created_verified_and_cached(backend: OpenSearchBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    minmax = backend._search_pipeline("minmax", [1.0, 3.0], 60)
    assert minmax == "ceindex-minmax-0.25-0.75"
    stored = backend.client.search_pipeline.get(id=minmax)[minmax]["phase_results_processors"]
    combination = stored[0]["normalization-processor"]["combination"]
    assert combination == {"technique": "arithmetic_mean", "parameters": {"weights": [0.25, 0.75]}}
    rrf = backend._search_pipeline("rrf", [1.0, 1.0], 17)
    assert rrf == "ceindex-rrf-17"
    stored = backend.client.search_pipeline.get(id=rrf)[rrf]["phase_results_processors"]
    assert stored == [{"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": 17}}}]

    def no_request(**_: object) -> None:
        raise AssertionError("a pipeline this backend made is neither created nor read again")

    monkeypatch.setattr(backend.client.search_pipeline, "put", no_request)
    monkeypatch.setattr(backend.client.search_pipeline, "get", no_request)
    assert backend._search_pipeline("minmax", [2.0, 6.0], 60) == minmax  # same weights once normalised
    assert backend._search_pipeline("rrf", [1.0, 1.0], 17) == rrf


def test_a_pipeline_that_does_not_hold_the_processors_is_refused(
    backend: OpenSearchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = backend.client.search_pipeline.get

    def altered(*, id: str) -> dict:
        stored = real_get(id=id)
        stored[id]["phase_results_processors"] = []
        return stored

    monkeypatch.setattr(backend.client.search_pipeline, "get", altered)
    with pytest.raises(BackendError, match="does not hold the expected processors"):
        backend._search_pipeline("rrf", [1.0, 1.0], 23)
