"""Shared fixtures: a tiny random BERT cross-encoder built in-test, paths to ../shared."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from ceindex.testing.elasticsearch_node import ElasticsearchNode
from ceindex.testing.java_node import JavaNode
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


# --- ONE real node per engine for the whole test session (OpenSearch 2.19.1, Elasticsearch 8.19, OpenSearch 3.5) --
# ``opensearch_url`` (session) is a base URL; ``opensearch_node`` the node itself, for kill/restart tests; likewise
# ``elasticsearch_*`` and ``opensearch3_*`` (see _node_fixtures below). CEINDEX_TEST_OPENSEARCH_URL (and the ES / OS3
# variables below) run the tests against an existing cluster instead (kill/restart tests are then skipped loudly).

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


def _node_fixtures(prefix: str, node_class: type[JavaNode], url_env: str) -> tuple[Any, Any, Any]:
    """The trio every test node has: ``_session_<prefix>_node`` (ONE node for the whole session, started on first
    use; None when ``url_env`` points the tests at an existing cluster), ``<prefix>_url`` (session: its base URL)
    and ``<prefix>_node`` (the node itself for kill/restart tests; running again after the test, restarted on its
    data if the test killed it). A node that cannot start raises (the tests ERROR with its log tail); never a skip,
    except kill/restart tests against an external cluster, which skip loudly."""

    @pytest.fixture(scope="session", name=f"_session_{prefix}_node")
    def session_node() -> Iterator[JavaNode | None]:
        if os.environ.get(url_env):
            yield None
            return
        node = node_class()
        node.start()
        try:
            yield node
        finally:
            node.stop()

    @pytest.fixture(scope="session", name=f"{prefix}_url")
    def url(request: pytest.FixtureRequest) -> str:
        node = request.getfixturevalue(f"_session_{prefix}_node")
        return os.environ[url_env].rstrip("/") if node is None else node.url

    @pytest.fixture(name=f"{prefix}_node")
    def node(request: pytest.FixtureRequest) -> Iterator[JavaNode]:
        node = request.getfixturevalue(f"_session_{prefix}_node")
        if node is None:
            pytest.skip(f"SKIPPED LOUDLY: {url_env} points at an external cluster; kill/restart tests need the test node")
        yield node
        if not node.running:
            node.restart()

    return session_node, url, node


URL_ENV = "CEINDEX_TEST_OPENSEARCH_URL"  # OpenSearch 2.19.1 (k-NN + neural-search)
ES_URL_ENV = "CEINDEX_TEST_ELASTICSEARCH_URL"  # Elasticsearch 8.19, security off; run as root it runs as ceindex-es
OS3_URL_ENV = "CEINDEX_TEST_OPENSEARCH3_URL"  # OpenSearch 3.5 (k-NN on a stand-in transport-grpc module; Java 21+)
_session_opensearch_node, opensearch_url, opensearch_node = _node_fixtures("opensearch", OpenSearchNode, URL_ENV)
_session_elasticsearch_node, elasticsearch_url, elasticsearch_node = _node_fixtures(
    "elasticsearch", ElasticsearchNode, ES_URL_ENV)
_session_opensearch3_node, opensearch3_url, opensearch3_node = _node_fixtures("opensearch3", OpenSearch3Node, OS3_URL_ENV)
