"""Bulk items the cluster could not take (HTTP 429/5xx: a shard without a live copy after a node died) fail the
build with advice to rerun; only document-level failures (4xx) become rejected rows. Before, a 503 item became a
"rejected row": the rerun skipped those documents and --allow-rejects would have published an index without them."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest

from ceindex.backends.opensearch import OpenSearchBackend
from ceindex.config import OpenSearchConfig
from ceindex.data.corpus import Document
from ceindex.errors import BackendError

UNAVAILABLE = {"index": {"_id": "b", "status": 503, "error": {
    "type": "unavailable_shards_exception", "reason": "[c-1][2] primary shard is not active Timeout: [1m]"}}}
OVERLOADED = {"index": {"_id": "b", "status": 429, "error": {
    "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}}
MAPPING = {"index": {"_id": "a", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad year"}}}


def _backend(items: list[dict[str, Any]]) -> OpenSearchBackend:
    backend = OpenSearchBackend(OpenSearchConfig(url="http://127.0.0.1:1", max_retries=0), client=object())

    def fake_bulk(client: Any, actions: Iterator[dict[str, Any]], **kwargs: Any):
        list(actions)
        return iter([(False, item) for item in items])

    backend._streaming_bulk = lambda: fake_bulk  # type: ignore[method-assign]
    return backend


def _write(backend: OpenSearchBackend):
    docs = [Document(id="a", title="", text="x", line=1), Document(id="b", title="", text="y", line=2)]
    return backend.write(SimpleNamespace(physical="c-1", slices=0), docs, np.zeros((2, 4), np.float32))  # type: ignore[arg-type]


def test_a_document_refused_with_4xx_is_a_reject_of_that_row() -> None:
    rejects = _write(_backend([MAPPING]))
    assert [(r.id, r.line) for r in rejects] == [("a", 1)] and "HTTP 400" in rejects[0].reason


def test_an_item_the_cluster_could_not_take_fails_the_batch_with_advice_to_rerun() -> None:
    with pytest.raises(BackendError) as failure:
        _write(_backend([MAPPING, UNAVAILABLE]))
    message = str(failure.value)
    assert "could not write document 'b'" in message and "HTTP 503" in message
    assert "primary shard is not active" in message and "rerun the same command to resume" in message
    assert "node or shard is unavailable" in message and "overloaded" not in message


def test_an_item_still_refused_with_429_says_the_cluster_is_overloaded() -> None:
    """429 after the retries ran out: the cluster is busy, not missing a node; the advice is to send less at a time
    or retry longer (before, it said a node or shard is unavailable and to bring a node back)."""
    with pytest.raises(BackendError) as failure:
        _write(_backend([OVERLOADED]))
    message = str(failure.value)
    assert "could not write document 'b'" in message and "HTTP 429" in message and "rejected execution" in message
    assert "overloaded" in message and "--chunk-docs" in message and "--max-retries" in message
    assert "rerun the same command to resume" in message
    assert "unavailable" not in message and "Bring the node back" not in message
