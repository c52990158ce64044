"""`ceindex serve` with re-ranking micro-batched across requests and the score cache (issue 15 parts 3 and 4):
each concurrent client gets its own answer (the single-threaded one), a saturated batcher still answers overload
with 503 + Retry-After and /healthz at once, a search waiting for the batcher stops at its deadline, repeated
queries are answered from the cache. A real uvicorn on 127.0.0.1 over a tiny-CE embedded index."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx
import numpy as np
import pytest

from ceindex.config import SearchConfig, ServeConfig, Settings
from ceindex.errors import ConfigError
from ceindex.models import EncoderConfig
from ceindex.models.scorer import CrossEncoderReranker
from search_pipeline import SearchPipeline
from search_pipeline.server import create_app
from tests.conftest import SAMPLE
from tests.serving import build_sample_index, serving

pytestmark = pytest.mark.reliability

TOP = 5
QUERIES = [json.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").read_text(encoding="utf-8").splitlines()]


class HeldReranker:
    """The real tiny CE behind a gate the test opens and closes; counts the pairs it scores."""

    def __init__(self, inner: CrossEncoderReranker) -> None:
        self.inner = inner
        self.model_ref, self.max_length, self.device = inner.model_ref, inner.max_length, inner.device
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.scored = 0

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.entered.set()
        assert self.open.wait(timeout=60), "the test never opened the re-ranker"
        self.scored += len(pairs)
        return self.inner.score(pairs)


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def settings(tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Settings:
    return build_sample_index(Settings(
        index="batched", home=str(tmp_path_factory.mktemp("serve-batching-home")),
        search=SearchConfig(recall_n=10, rerank_top=TOP, rerank_max_length=64),
        encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64)))


@pytest.fixture()
def held(settings: Settings) -> Iterator[tuple[SearchPipeline, HeldReranker]]:
    reranker = HeldReranker(CrossEncoderReranker(settings.encoder.model, max_length=64))
    pipeline = SearchPipeline(settings, reranker=reranker)
    yield pipeline, reranker
    reranker.open.set()
    pipeline.close()


def _post(url: str, query: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/search", json={"query": query, "k": TOP}, timeout=timeout)


def _ranking(hits: list[dict[str, Any]]) -> list[tuple[str, float | None]]:
    return [(h["id"], h["fused_score"]) for h in hits]


def _send_all(url: str, queries: list[str]) -> tuple[dict[int, httpx.Response], list[threading.Thread]]:
    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        answers[i] = _post(url, queries[i])

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    return answers, threads


def test_concurrent_searches_through_the_batcher_each_get_the_single_threaded_answer(held) -> None:
    pipeline, reranker = held
    reference = [pipeline.search(q, k=TOP) for q in QUERIES]  # the Python API, one query at a time
    config = ServeConfig(max_concurrent=len(QUERIES), max_queued=4, batch_wait_ms=5, score_cache_size=0)
    app = create_app(pipeline, config)
    reranker.open.clear()
    reranker.entered.clear()  # set by the reference searches
    with serving(app) as url:
        first, threads = _send_all(url, QUERIES[:1])
        _wait_until(reranker.entered.is_set, "the first search to reach the re-ranker")
        rest, more_threads = _send_all(url, QUERIES[1:])
        _wait_until(lambda: app.state.rerank.batcher.queued == len(QUERIES) - 1,
                    "9 searches to queue at the batcher behind the first")
        reranker.open.set()
        for thread in threads + more_threads:
            thread.join(timeout=60)
    answers = {0: first[0]} | {i + 1: response for i, response in rest.items()}
    stats = app.state.rerank.batcher.stats()
    assert (stats.batches, stats.largest_batch) == (2, len(QUERIES) - 1)  # one alone, then the other 9 together
    for i, expected in enumerate(reference):
        assert answers[i].status_code == 200, answers[i].text
        hits = answers[i].json()["results"][0]["hits"]
        assert [h["id"] for h in hits] == [h.id for h in expected.hits], f"query {i} got another ranking"
        assert _ranking(hits) == [(h.id, h.fused_score) for h in expected.hits]
        # batched with other queries' pairs, float32 scores may move in the last bits (other batch shapes)
        assert np.allclose([h["rerank_score"] for h in hits], [h.rerank_score for h in expected.hits], rtol=0, atol=1e-5)


def test_a_saturated_batcher_answers_overload_with_503_and_healthz_at_once(held) -> None:
    pipeline, reranker = held
    app = create_app(pipeline, ServeConfig(max_concurrent=2, max_queued=1, request_timeout=60, score_cache_size=0))
    reranker.open.clear()
    with serving(app) as url:
        answers, threads = _send_all(url, QUERIES[:1])  # scoring (held)
        _wait_until(reranker.entered.is_set, "the first search to reach the re-ranker")
        more, more_threads = _send_all(url, QUERIES[1:3])  # 1 queued at the batcher, 1 waiting for a search slot
        threads += more_threads
        _wait_until(lambda: app.state.rerank.batcher.queued == 1 and app.state.gate.admitted == 3,
                    "the batcher and the search queue to fill")
        refused = [_post(url, f"extra {i}", timeout=30) for i in range(3)]
        health = httpx.get(f"{url}/healthz", timeout=10)  # the scorer is still held: healthz must not wait for it
        reranker.open.set()
        for thread in threads:
            thread.join(timeout=60)
    for response in refused:
        assert response.status_code == 503 and "busy" in response.json()["error"]
        assert int(response.headers["retry-after"]) >= 1
    assert health.status_code == 200 and health.json()["documents"] == 30
    assert health.json()["serving"]["batcher"]["batches"] == 0  # answered while the first batch was still held
    assert [r.status_code for r in (answers[0], more[0], more[1])] == [200, 200, 200]


def test_a_search_waiting_for_the_batcher_stops_at_its_deadline(held) -> None:
    pipeline, reranker = held
    app = create_app(pipeline, ServeConfig(request_timeout=1.0, score_cache_size=0))
    reranker.open.clear()
    with serving(app) as url:
        answers, threads = _send_all(url, QUERIES[:1])  # holds the scorer
        _wait_until(reranker.entered.is_set, "the first search to reach the re-ranker")
        more, more_threads = _send_all(url, QUERIES[1:2])  # queues at the batcher behind it
        for thread in threads + more_threads:
            thread.join(timeout=30)
        _wait_until(lambda: app.state.rerank.batcher.stats().dropped == 1, "the queued search to leave the batcher")
        reranker.open.set()
        _wait_until(lambda: app.state.gate.admitted == 0, "the held search to finish")
        after = _post(url, QUERIES[2])
    assert [answers[0].status_code, more[0].status_code] == [504, 504]
    assert "took longer than 1 s" in answers[0].json()["error"]
    assert after.status_code == 200


def test_repeated_queries_are_answered_from_the_score_cache(held) -> None:
    pipeline, reranker = held
    app = create_app(pipeline, ServeConfig(score_cache_size=1000))
    with serving(app) as url:
        first = _post(url, QUERIES[0])
        scored = reranker.scored
        again = _post(url, QUERIES[0])
        health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert first.status_code == again.status_code == 200
    assert again.json()["results"][0]["hits"] == first.json()["results"][0]["hits"]  # the very same scores
    assert scored == TOP and reranker.scored == TOP  # the repeat never reached the model
    assert health["serving"]["score_cache"]["hits"] == TOP and health["serving"]["score_cache"]["entries"] == TOP


def test_batching_and_the_cache_switch_off(held) -> None:
    pipeline, _ = held
    app = create_app(pipeline, ServeConfig(batching=False, score_cache_size=0))
    assert app.state.rerank.batcher is None and app.state.rerank.cache is None
    assert app.state.rerank.pipeline is pipeline  # searches run the model on their own thread, as before
    with serving(app) as url:
        assert _post(url, QUERIES[0]).status_code == 200
        assert "serving" not in httpx.get(f"{url}/healthz", timeout=10).json()


@pytest.mark.parametrize(("runtime", "dtype", "shared"), [
    ("torch", "int8", False), ("onnx", "int8", False), ("openvino", "int8", True), ("torch", "float32", True)])
def test_int8_whose_scores_depend_on_the_batch_is_never_batched_nor_cached(
        settings: Settings, runtime: str, dtype: str, shared: bool) -> None:
    # dynamic int8 (torch, ONNX Runtime) quantises activations per batch: a pair's score moves with its companions
    search = replace(settings.search, rerank_runtime=runtime, rerank_dtype=dtype)
    pipeline = SearchPipeline(replace(settings, search=search),
                              reranker=CrossEncoderReranker(settings.encoder.model, max_length=64))
    try:
        app = create_app(pipeline, ServeConfig(batching=True, score_cache_size=100))
        stack = app.state.rerank
        assert (stack.batcher is not None, stack.cache is not None) == (shared, shared)
        stack.close()
    finally:
        pipeline.close()


@pytest.mark.parametrize(("changes", "message"), [
    ({"batch_wait_ms": -1.0}, "serve.batch_wait_ms must be between 0 and 1000"),
    ({"batch_wait_ms": float("nan")}, "serve.batch_wait_ms must be between 0 and 1000"),
    ({"batch_max_pairs": 0}, "serve.batch_max_pairs must be >= 1"),
    ({"score_cache_size": -5}, "serve.score_cache_size must be >= 0"),
])
def test_bad_batching_settings_are_config_errors(settings: Settings, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(SearchPipeline(replace(settings, search=replace(settings.search, rerank=False))),
                   ServeConfig(**changes))
