"""Shared fixtures: a tiny random BERT cross-encoder built in-test, paths to ../shared."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from ceindex.testing.elasticsearch_node import ElasticsearchNode
from ceindex.testing.opensearch_node import OpenSearch3Node, OpenSearchNode

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE_CE = SHARED / "models" / "ce-minilm-l6-scifact"
SCIFACT = SHARED / "data" / "scifact"
SAMPLE = REPO / "ceindex" / "samples" / "tiny-science"

pytest_plugins = ("pytester",)  # tests/unit/test_markers.py runs small pytest sessions of its own



def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"SKIPPED LOUDLY: {path} is absent; put the shared data/models folder at {SHARED}")
    return path


@pytest.fixture(scope="session")
def tiny_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer BERT cross-encoder (hidden 32) whose WordPiece vocabulary covers the sample corpus."""
    import re

    from tests.unit._tiny_models import build_tiny_ce

    words = set()
    for name in ("corpus.jsonl", "queries.jsonl"):
        words |= set(re.findall(r"[a-z]+", (SAMPLE / name).read_text(encoding="utf-8").lower()))
    return build_tiny_ce("bert", tmp_path_factory.mktemp("tiny-ce"), extra_words=words)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: thread hand-offs cost more than the maths, badly so on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def ceindex_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CEINDEX_HOME", str(home))
    return home


@pytest.fixture(autouse=True, scope="session")
def _no_tokenizers_parallelism() -> None:
    """Keep the Rust tokenizers from starting their own thread pool (and warning after a fork)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- ONE real OpenSearch 2.19.1 node for the whole test session ---------------------------------------
# ``opensearch_url`` (session) is its base URL; ``opensearch_node`` is the node itself, for kill/restart tests. If
# the node cannot start, the fixtures raise (the tests ERROR); they never skip. Set CEINDEX_TEST_OPENSEARCH_URL to
# run against an existing cluster instead (kill/restart tests are then skipped loudly).
URL_ENV = "CEINDEX_TEST_OPENSEARCH_URL"

# Every test that needs the node carries ``pytest.mark.integration`` (``-m "not integration"`` then never starts
# it). Tests parametrised over both backends take the mark on the OpenSearch case only, through this list.
NODE_FIXTURES = ("opensearch_url", "opensearch_node", "_session_opensearch_node",
                 "elasticsearch_url", "elasticsearch_node", "_session_elasticsearch_node",
                 "opensearch3_url", "opensearch3_node", "_session_opensearch3_node")
BACKEND_PARAMS = ["embedded", pytest.param("opensearch", marks=pytest.mark.integration)]
# the same, with the Elasticsearch 8.19 node too (for the tests whose fixtures take the URL from ``cluster_url``)
ALL_BACKEND_PARAMS = [*BACKEND_PARAMS, pytest.param("elasticsearch", marks=pytest.mark.integration)]
# ... and OpenSearch 3.5 (k-NN, no neural-search: client-side fusion), for the core build and search tests
CORE_BACKEND_PARAMS = [*ALL_BACKEND_PARAMS, pytest.param("opensearch3", marks=pytest.mark.integration)]
CLUSTER_FIXTURES = {"opensearch": ("opensearch_url", "opensearch_node"),
                    "elasticsearch": ("elasticsearch_url", "elasticsearch_node"),
                    "opensearch3": ("opensearch3_url", "opensearch3_node")}


def cluster_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    """The test node's URL for a cluster ``backend`` param, None for the embedded one."""
    return request.getfixturevalue(CLUSTER_FIXTURES[backend][0]) if backend in CLUSTER_FIXTURES else None


def cluster_node(request: pytest.FixtureRequest, backend: str):
    """The test node itself (for kill/restart) of a cluster ``backend`` param, None for the embedded one."""
    return request.getfixturevalue(CLUSTER_FIXTURES[backend][1]) if backend in CLUSTER_FIXTURES else None


@pytest.fixture(autouse=True)
def _node_tests_are_marked_integration(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that used the node (directly, through a fixture, or via ``request.getfixturevalue``) without
    the ``integration`` marker, so the marker cannot drift from what the tests really need."""
    yield
    if set(NODE_FIXTURES) & set(request.fixturenames) and request.node.get_closest_marker("integration") is None:
        pytest.fail(f"{request.node.nodeid} uses the real OpenSearch node (opensearch_url / opensearch_node) but is "
                    "not marked integration: add pytestmark = pytest.mark.integration or @pytest.mark.integration, "
                    "or take the backend from tests.conftest.BACKEND_PARAMS", pytrace=False)


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


# --- ONE real Elasticsearch 8.19 node (security off) for the whole test session, like the OpenSearch one -----
# Started on first use (``-m "not integration"`` never starts it); CEINDEX_TEST_ELASTICSEARCH_URL points the tests at
# an existing cluster instead. Run as root, the node runs as the ``ceindex-es`` system user (ES refuses root).
ES_URL_ENV = "CEINDEX_TEST_ELASTICSEARCH_URL"


@pytest.fixture(scope="session")
def _session_elasticsearch_node() -> Iterator[ElasticsearchNode | None]:
    if os.environ.get(ES_URL_ENV):
        yield None
        return
    node = ElasticsearchNode()
    node.start()  # RuntimeError (with the node log tail) fails every test that needs the node
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def elasticsearch_url(_session_elasticsearch_node: ElasticsearchNode | None) -> str:
    if _session_elasticsearch_node is None:
        return os.environ[ES_URL_ENV].rstrip("/")
    return _session_elasticsearch_node.url


@pytest.fixture()
def elasticsearch_node(_session_elasticsearch_node: ElasticsearchNode | None) -> Iterator[ElasticsearchNode]:
    """The session's Elasticsearch node; running again after the test (restarted on its data if killed)."""
    node = _session_elasticsearch_node
    if node is None:
        pytest.skip(f"SKIPPED LOUDLY: {ES_URL_ENV} points at an external cluster; kill/restart tests need the test node")
    yield node
    if not node.running:
        node.restart()


# --- ONE real OpenSearch 3.5 node (k-NN 3.5 on a stand-in transport-grpc module; Java 21+), started on first use ---
OS3_URL_ENV = "CEINDEX_TEST_OPENSEARCH3_URL"


@pytest.fixture(scope="session")
def _session_opensearch3_node() -> Iterator[OpenSearch3Node | None]:
    if os.environ.get(OS3_URL_ENV):
        yield None
        return
    node = OpenSearch3Node()
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def opensearch3_url(_session_opensearch3_node: OpenSearch3Node | None) -> str:
    if _session_opensearch3_node is None:
        return os.environ[OS3_URL_ENV].rstrip("/")
    return _session_opensearch3_node.url


@pytest.fixture()
def opensearch3_node(_session_opensearch3_node: OpenSearch3Node | None) -> Iterator[OpenSearch3Node]:
    node = _session_opensearch3_node
    if node is None:
        pytest.skip(f"SKIPPED LOUDLY: {OS3_URL_ENV} points at an external cluster; kill/restart tests need the test node")
    yield node
    if not node.running:
        node.restart()
