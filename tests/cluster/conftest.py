"""ONE real three-node OpenSearch 2.19.1 cluster (three loopback JVMs of the Maven-built test node, settings from
docker/docker-compose.cluster.yml) for the tests in this folder.

Started on first use by a test marked ``cluster`` (``make unit`` never collects this folder; ``make test`` and CI
run it); if it cannot start, the tests ERROR with the members' log tails, they never skip. Every test here must
carry the ``cluster`` marker: the guard below fails one that does not.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from ceindex.testing.opensearch_cluster import OpenSearchCluster

CLUSTER_FIXTURES = ("opensearch_cluster", "_session_opensearch_cluster")


@pytest.fixture(scope="session")
def _session_opensearch_cluster() -> Iterator[OpenSearchCluster]:
    cluster = OpenSearchCluster()
    cluster.start()  # RuntimeError (with every member's log tail) fails the tests that need the cluster
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def opensearch_cluster(_session_opensearch_cluster: OpenSearchCluster) -> Iterator[OpenSearchCluster]:
    """The session's cluster; after the test every member runs again and the cluster is green."""
    cluster = _session_opensearch_cluster
    yield cluster
    for index, node in enumerate(cluster.nodes):
        if not node.running:
            cluster.restart(index)
    cluster.wait_for("green", nodes=len(cluster.nodes))


@pytest.fixture(autouse=True)
def _cluster_tests_are_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if set(CLUSTER_FIXTURES) & set(request.fixturenames) and request.node.get_closest_marker("cluster") is None:
        pytest.fail(f"{request.node.nodeid} uses the three-node OpenSearch cluster but is not marked cluster: add "
                    "pytestmark = pytest.mark.cluster", pytrace=False)
