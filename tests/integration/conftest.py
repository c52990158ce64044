"""Integration fixtures: ONE real OpenSearch 2.19.1 node for the whole test session.

``opensearch_url`` (session) is the base URL of that node; ``opensearch_node`` is the
:class:`~ceindex.testing.opensearch_node.OpenSearchNode` itself, for tests that kill and restart it.
If the node cannot be started the fixtures raise (the tests ERROR); they never skip.

Set ``CEINDEX_TEST_OPENSEARCH_URL`` to run against an existing cluster instead (credentials from
CEINDEX_OPENSEARCH_USER / CEINDEX_OPENSEARCH_PASSWORD); tests that need ``opensearch_node``
(kill/restart) are then skipped, because an external cluster cannot be crashed by the tests.
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from ceindex.testing.opensearch_node import OpenSearchNode

URL_ENV = "CEINDEX_TEST_OPENSEARCH_URL"


@pytest.fixture(scope="session")
def _session_opensearch_node() -> Iterator[OpenSearchNode | None]:
    if os.environ.get(URL_ENV):
        yield None
        return
    node = OpenSearchNode()
    node.start()  # RuntimeError (with the node log tail) fails every test that needs the node
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def opensearch_url(_session_opensearch_node: OpenSearchNode | None) -> str:
    if _session_opensearch_node is None:
        return os.environ[URL_ENV].rstrip("/")
    return _session_opensearch_node.url


@pytest.fixture()
def opensearch_node(_session_opensearch_node: OpenSearchNode | None) -> Iterator[OpenSearchNode]:
    """The session's node; after the test it is running again (restarted on its data if a test killed it)."""
    node = _session_opensearch_node
    if node is None:
        pytest.skip(f"SKIPPED LOUDLY: {URL_ENV} points at an external cluster; kill/restart tests need the test node")
    yield node
    if not node.running:
        node.restart()
