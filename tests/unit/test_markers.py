"""Tests that use the real OpenSearch node must carry the ``integration`` marker: the guard in tests/conftest.py
fails any that does not, however it reaches the node (a fixture argument, a fixture of a fixture, or
``request.getfixturevalue`` inside a parametrised fixture)."""
from __future__ import annotations

import pytest

CONFTEST = """
import pytest

from tests.conftest import _node_tests_are_marked_integration  # noqa: F401 - the guard under test


@pytest.fixture(scope="session")
def _session_opensearch_node():
    yield None  # no real node: only which fixtures a test uses matters here


@pytest.fixture(scope="session")
def opensearch_url(_session_opensearch_node):
    return "http://127.0.0.1:1"


@pytest.fixture()
def opensearch_node(_session_opensearch_node):
    return None
"""

TESTS = """
import pytest

from tests.conftest import BACKEND_PARAMS


@pytest.fixture(scope="module")
def client(opensearch_url):
    return opensearch_url


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    return request.getfixturevalue("opensearch_url") if request.param == "opensearch" else None


@pytest.fixture(params=["embedded", "opensearch"])
def unmarked_backend(request):
    return request.getfixturevalue("opensearch_url") if request.param == "opensearch" else None


def test_unmarked_url(opensearch_url): pass
def test_unmarked_node(opensearch_node): pass
def test_unmarked_through_a_fixture(client): pass
def test_unmarked_dynamic(request): request.getfixturevalue("opensearch_url")
def test_unmarked_backends(unmarked_backend): pass
def test_no_node(): pass
def test_both_backends(backend): pass

@pytest.mark.integration
def test_marked_url(opensearch_url): pass

@pytest.mark.integration
def test_marked_node(opensearch_node): pass
"""


def test_node_tests_without_the_integration_marker_fail(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_node=TESTS)
    reports = pytester.inline_run("-p", "no:cacheprovider").getreports("pytest_runtest_logreport")
    failed = {r.nodeid.split("::")[-1] for r in reports if r.failed}
    assert failed == {"test_unmarked_url", "test_unmarked_node", "test_unmarked_through_a_fixture",
                      "test_unmarked_dynamic", "test_unmarked_backends[opensearch]"}
    message = next(str(r.longrepr) for r in reports if r.failed)
    assert "not marked integration" in message
    ran = {r.nodeid.split("::")[-1] for r in reports if r.when == "call" and r.passed}
    assert {"test_no_node", "test_both_backends[embedded]", "test_both_backends[opensearch]",
            "test_marked_url", "test_marked_node", "test_unmarked_backends[embedded]"} <= ran


def test_deselecting_integration_leaves_no_test_that_reaches_the_node(pytester: pytest.Pytester) -> None:
    """`-m "not integration"` keeps the embedded case of a two-backend test and drops its OpenSearch case."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_node=TESTS)
    reports = pytester.inline_run("-p", "no:cacheprovider", "-m", "not integration",
                                  "-k", "both_backends or test_marked").getreports("pytest_runtest_logreport")
    assert {r.nodeid.split("::")[-1] for r in reports if r.when == "call"} == {"test_both_backends[embedded]"}
