"""The Elasticsearch 8.19 test node: started by the session fixture as an unprivileged user, identified by its
``X-elastic-product`` header (``GET /`` answers 405 in this distribution), BM25 + kNN work, and a SIGKILL keeps
the data for the restart."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.integration


def _request(url: str, method: str = "GET", body: object | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def test_node_identifies_itself_and_reports_its_version(elasticsearch_url: str) -> None:
    status, headers, _ = _request(elasticsearch_url + "/")
    assert status == 405 and headers.get("X-elastic-product") == "Elasticsearch"
    _, _, nodes = _request(elasticsearch_url + "/_nodes/_local")
    versions = {node["version"] for node in nodes["nodes"].values()}
    assert versions == {"8.19.21"}


def test_node_does_not_run_as_root(elasticsearch_node) -> None:
    uids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read().split()
            except OSError:
                continue
            if int(stat[4]) == elasticsearch_node.pid:  # its process group
                uids.add(os.stat(f"/proc/{pid}").st_uid)
    assert uids and (0 not in uids or os.geteuid() != 0)


def test_bm25_and_knn_then_kill_keeps_the_data(elasticsearch_node) -> None:
    url, name = elasticsearch_node.url, f"smoke-{uuid.uuid4().hex[:8]}"
    mapping = {"mappings": {"properties": {"text": {"type": "text"},
               "vec": {"type": "dense_vector", "dims": 2, "index": True, "similarity": "cosine",
                       "index_options": {"type": "hnsw", "m": 16, "ef_construction": 64}}}}}
    assert _request(f"{url}/{name}", "PUT", mapping)[0] == 200
    for doc_id, text, vec in (("fox", "the quick brown fox", [1.0, 0.0]), ("dog", "a lazy dog", [0.0, 1.0])):
        assert _request(f"{url}/{name}/_doc/{doc_id}?refresh=true", "PUT", {"text": text, "vec": vec})[0] == 201
    _, _, bm25 = _request(f"{url}/{name}/_search", "POST", {"query": {"match": {"text": "fox"}}})
    assert [h["_id"] for h in bm25["hits"]["hits"]] == ["fox"]
    _, _, knn = _request(f"{url}/{name}/_search", "POST",
                         {"knn": {"field": "vec", "query_vector": [0.1, 1.0], "k": 1, "num_candidates": 10}})
    assert [h["_id"] for h in knn["hits"]["hits"]] == ["dog"]
    elasticsearch_node.kill()
    assert not elasticsearch_node.running
    elasticsearch_node.restart()
    _, _, count = _request(f"{url}/{name}/_count")
    assert count["count"] == 2
    _request(f"{url}/{name}", "DELETE")


def test_the_english_analyzer_comes_from_ceindex_plugin_and_stems(elasticsearch_url: str) -> None:
    """The Maven distribution has no analysis-common; ceindex's stable plugin brings Lucene's EnglishAnalyzer back,
    and the backend picks it for BM25 (the same analysis as OpenSearch's ``english``)."""
    from ceindex.backends.elasticsearch import ElasticsearchBackend
    from ceindex.config import OpenSearchConfig

    status, _, body = _request(elasticsearch_url + "/_analyze", "POST", {"analyzer": "english", "text": "x"})
    assert status == 400 and "english" in json.dumps(body)
    _, _, body = _request(elasticsearch_url + "/_analyze", "POST",
                          {"analyzer": "ceindex_english", "text": "The running dogs' houses"})
    assert [t["token"] for t in body["tokens"]] == ["run", "dog", "hous"]
    backend = ElasticsearchBackend(OpenSearchConfig(url=elasticsearch_url, max_retries=0))
    try:
        assert backend.text_analyzer() == "ceindex_english"
    finally:
        backend.close()
