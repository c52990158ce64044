"""``--cluster URL``: the engine and version are detected from recorded answers of each engine, and the error
for an unsupported one names what was found and what is supported."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from click.testing import CliRunner

from ceindex.backends.detect import ELASTICSEARCH, OPENSEARCH, detect_engine
from ceindex.config import OpenSearchConfig
from ceindex.errors import BackendError

# GET / of OpenSearch 2.19 and 3.5, of a full Elasticsearch 8 distribution, and of an Elasticsearch 7 (recorded)
OS_ROOT = {"name": "n", "cluster_name": "c", "version": {"distribution": "opensearch", "number": "2.19.1",
                                                          "lucene_version": "9.12.1"}, "tagline": "The OpenSearch Project"}
OS3_ROOT = {**OS_ROOT, "version": {"distribution": "opensearch", "number": "3.5.0", "lucene_version": "10.3.1"}}
ES_ROOT = {"name": "n", "version": {"number": "8.19.21", "build_flavor": "default", "lucene_version": "9.12.2"},
           "tagline": "You Know, for Search"}
ES7_ROOT = {**ES_ROOT, "version": {"number": "7.17.25", "build_flavor": "default"}}
# the integ-test-zip distribution: GET / is 405, every answer carries the product header, _nodes has the version
ES_NODES = {"_nodes": {"total": 1}, "cluster_name": "c", "nodes": {"x": {"name": "n", "version": "8.19.21"}}}

ROUTES: dict[str, dict[str, tuple[int, dict, dict | None]]] = {
    "os2": {"/": (200, {}, OS_ROOT)},
    "os3": {"/": (200, {}, OS3_ROOT)},
    "es8": {"/": (200, {"X-elastic-product": "Elasticsearch"}, ES_ROOT)},
    "es8-405": {"/": (405, {"X-elastic-product": "Elasticsearch"}, {"error": "Incorrect HTTP method"}),
                "/_nodes/_local/_none": (200, {"X-elastic-product": "Elasticsearch"}, ES_NODES)},
    "es7": {"/": (200, {"X-elastic-product": "Elasticsearch"}, ES7_ROOT)},
    "other": {"/": (200, {}, {"solr": "yes"})},
    "locked": {"/": (401, {"WWW-Authenticate": "Basic"}, {"error": "unauthorized"})},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            kind, _, path = self.path.lstrip("/").partition("/")
            status, headers, body = ROUTES[kind].get("/" + path, (404, {}, {"error": "no"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            for key, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _detect(base: str, kind: str):
    return detect_engine(OpenSearchConfig(url=f"{base}/{kind}", max_retries=0, timeout=5))


@pytest.mark.parametrize("kind, engine, version", [
    ("os2", OPENSEARCH, "2.19.1"), ("os3", OPENSEARCH, "3.5.0"),
    ("es8", ELASTICSEARCH, "8.19.21"), ("es8-405", ELASTICSEARCH, "8.19.21"),
])
def test_engine_and_version_are_detected(fake: str, kind: str, engine: str, version: str) -> None:
    found = _detect(fake, kind)
    assert (found.name, found.version) == (engine, version)


def test_unsupported_version_names_what_was_found_and_what_is_supported(fake: str) -> None:
    with pytest.raises(BackendError, match=r"runs Elasticsearch 7\.17\.25, which ceindex does not support; it supports "
                                           r"OpenSearch 2\.x-3\.x, Elasticsearch 8\.x"):
        _detect(fake, "es7")


def test_another_server_is_not_taken_for_a_cluster(fake: str) -> None:
    with pytest.raises(BackendError, match="is not OpenSearch or Elasticsearch .*HTTP 200.*supports OpenSearch 2"):
        _detect(fake, "other")


def test_refused_credentials_say_which_variables_to_set(fake: str) -> None:
    with pytest.raises(BackendError, match="refused the credentials .*HTTP 401.*CEINDEX_OPENSEARCH_PASSWORD"):
        _detect(fake, "locked")


def test_cluster_flag_old_name_and_environment_variable_set_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from ceindex.cli import cli

    from ceindex.testing.java_node import free_port

    runner, url = CliRunner(), f"http://127.0.0.1:{free_port()}"
    seen = []
    for args, env in ((["--cluster", url], {}), (["--opensearch", url], {}), ([], {"CEINDEX_CLUSTER_URL": url})):
        result = runner.invoke(cli, ["search", *args, "--max-retries", "0", "--index", "x", "q"], env=env)
        seen.append((result.exit_code, result.output))
    # all three reach for the cluster (none is refused as an unknown flag, none falls back to the embedded store)
    assert all(code == 2 and f"cannot reach the cluster at {url}" in out for code, out in seen), seen

