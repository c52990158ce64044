"""`ceindex serve` against hostile and heavy traffic (issue 11 item 7): body and batch limits, input that must be a
4xx with a short message, authentication, the error mapping, overload, deadlines, disconnects and SIGTERM.

Every server here is a real uvicorn on 127.0.0.1; failures a real index cannot produce on demand (cluster time-outs,
crashes, slow searches) come from a fake pipeline.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import httpx
import pytest

from ceindex.config import SearchConfig, ServeConfig, Settings, defaults_yaml, load_settings
from ceindex.errors import BackendError, ConfigError, InputError
from ceindex.models import EncoderConfig
from search_pipeline import SearchPipeline, SearchResult
from search_pipeline.server import QUERIES_PER_CHUNK, api_key_from_env, create_app
from tests.serving import build_sample_index, free_port, serving

pytestmark = pytest.mark.reliability

SEARCH_SETTINGS = SearchConfig(recall_n=10, rerank_top=3, rerank_max_length=64, max_query_chars=200)


# --- helpers ------------------------------------------------------------------------------------
class FakePipeline:
    """Just enough of SearchPipeline for the server: ``search_many`` is supplied by the test."""

    index = "fake"
    config = SearchConfig(max_query_chars=200)
    validate = SearchPipeline.validate

    def __init__(self, search: Callable[[Sequence[str], int], list[SearchResult]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self._search = search or (lambda queries, k: [SearchResult(query=q, hits=[], timings_ms={}) for q in queries])
        encoder = SimpleNamespace(to_dict=lambda: {"kind": "fake"})
        info = SimpleNamespace(name="fake", physical="fake-1", count=0, encoder=encoder)
        self.backend = SimpleNamespace(info=lambda index: info)

    def search_many(self, queries: Sequence[str], k: int = 10, **_: Any) -> list[SearchResult]:
        self.calls.append(list(queries))
        return self._search(queries, k)


def _assert_short_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert len(response.content) < 1000, "error messages must stay short"
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- a real tiny index and server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_sample_index(Settings(index="served", home=str(tmp_path_factory.mktemp("serve-limits-home")),
                                       search=SEARCH_SETTINGS,
                                       encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64)))


@pytest.fixture(scope="module")
def real_server(built: Settings, one_torch_thread: None) -> Iterator[str]:
    config = ServeConfig(max_body_bytes=16384, max_queries=8)
    with serving(create_app(SearchPipeline(built), config)) as url:
        yield url


# --- body size and batch size ------------------------------------------------------------------------
def test_oversized_body_with_content_length_is_413(real_server: str) -> None:
    body = json.dumps({"query": "volcano", "k": 3, "pad": "x" * 20000}).encode()
    response = httpx.post(f"{real_server}/search", content=body, headers={"content-type": "application/json"}, timeout=30)
    _assert_short_error(response, 413, "too large", "16384 bytes", "serve.max_body_bytes")
    assert "xxxxxxxxxx" not in response.text


def test_oversized_chunked_body_without_content_length_is_413(real_server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "volcano", "pad": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(f"{real_server}/search", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert "content-length" not in response.request.headers  # sent chunked
    _assert_short_error(response, 413, "too large", "16384 bytes")


def test_a_body_that_trickles_in_is_cut_off_at_the_request_timeout() -> None:
    with serving(create_app(FakePipeline(), ServeConfig(request_timeout=1.0))) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"query\": ")  # ...and never the rest
            started = time.monotonic()
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply and waited < 5


def test_too_many_queries_is_refused_naming_the_limit(real_server: str) -> None:
    response = httpx.post(f"{real_server}/search", json={"queries": ["volcano"] * 9}, timeout=30)
    _assert_short_error(response, 413, "too many queries: 9", "limit is 8", "serve.max_queries")


def test_a_thousand_queries_under_the_default_limits_are_refused_without_searching() -> None:
    """The probe's request: 1,000 queries in ~15 KB pinned the CPU for minutes."""
    pipeline = FakePipeline()
    with serving(create_app(pipeline, ServeConfig())) as url:
        payload = {"queries": [f"query number {i}" for i in range(1000)]}
        assert len(json.dumps(payload)) < ServeConfig().max_body_bytes
        response = httpx.post(f"{url}/search", json=payload, timeout=30)
    _assert_short_error(response, 413, "too many queries: 1000", "limit is 32")
    assert pipeline.calls == []


# --- malformed input: always a 4xx with a short message, never the input echoed ------------------
def test_validation_errors_name_the_fields_without_echoing_the_body(real_server: str) -> None:
    marker = "ECHO-MARKER-" * 40
    response = httpx.post(f"{real_server}/search", json={"query": [marker], "k": marker}, timeout=30)
    body = _assert_short_error(response, 422, "query", "k:")
    assert "ECHO-MARKER" not in response.text and "input" not in body


def test_an_unknown_key_is_named_by_a_short_excerpt_only(real_server: str) -> None:
    key = "K" * 2000
    response = httpx.post(f"{real_server}/search", json={"query": "volcano", key: 1}, timeout=30)
    _assert_short_error(response, 422, "Extra inputs are not permitted", "KKKK")
    assert key[:200] not in response.text


MALFORMED = [
    # (raw body, status, fragment of the message)
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'"volcano"', 422, "must be a JSON object"),
    (b"null", 422, "must be a JSON object"),
    (b"", 422, "the body is empty"),
    (b'{"query": "volcano"', 422, "not valid JSON"),
    (b'{"query": "\xff\xfe volcano"}', 400, "could not be parsed"),  # invalid UTF-8
    (b"[" * 3000 + b"]" * 3000, 400, "could not be parsed"),  # nested past the recursion limit
    (b'{"query": "volcano", "k": ' + b"9" * 5000 + b"}", 400, "could not be parsed"),
    (b'{"query": "\\ud800 volcano"}', 400, "not valid Unicode"),  # was a 503 from the tokenizer
    (b'{"query": 5, "x": "\\udfff"}', 422, "valid string"),  # was a 503: the 422 echo could not be encoded
    (b'{"query": "volcano", "k": 1e400}', 422, "k: Input should be a valid integer"),  # was a 503: inf in the echo
    (b'{"query": "volcano", "k": NaN}', 422, "k: Input should be a valid integer"),  # was a 503: NaN in the echo
    (b'{"query": "volcano", "k": 1000000000000}', 422, "less than or equal to 1000"),
    (b'{"query": " \\t\\n "}', 400, "query 0 is empty"),
    (b'{"queries": ["volcano", 3]}', 422, "queries.1"),
    (b'{"queries": "volcano"}', 422, "valid list"),
    (b'{"queries": [["volcano"]], "k": {"a": [null]}}', 422, "queries.0"),
    (b'{"queries": ["volcano", "   "]}', 400, "query 1 is empty"),
]


@pytest.mark.parametrize(("raw", "status", "fragment"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_input_is_a_4xx_with_a_short_message(real_server: str, raw: bytes, status: int, fragment: str) -> None:
    response = httpx.post(f"{real_server}/search", content=raw, headers={"content-type": "application/json"}, timeout=30)
    _assert_short_error(response, status, fragment)


def test_other_paths_and_methods_answer_json_errors(real_server: str) -> None:
    _assert_short_error(httpx.get(f"{real_server}/nowhere", timeout=30), 404, "Not Found")
    _assert_short_error(httpx.get(f"{real_server}/search", timeout=30), 405, "Method Not Allowed")


def _json_values() -> Any:
    from hypothesis import strategies as st

    text = st.text(st.characters(exclude_categories=()), max_size=30)  # lone surrogates included
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                          max_leaves=12)
    shaped = st.fixed_dictionaries({}, optional={"query": values | text, "queries": st.lists(values | text, max_size=5),
                                                 "k": values | st.integers(-5, 2000)})
    return shaped | values


def test_random_json_bodies_never_get_a_5xx(real_server: str) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(_json_values())
    def check(value: Any) -> None:
        raw = json.dumps(value, ensure_ascii=True).encode()  # NaN/Infinity and \udxxx escapes included
        response = httpx.post(f"{real_server}/search", content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 200 or 400 <= response.status_code < 500, (raw[:200], response.text[:300])
        if response.status_code == 200:
            assert isinstance(response.json()["results"], list)
        else:
            _assert_short_error(response, response.status_code)

    check()


# --- authentication ------------------------------------------------------------------------------
@pytest.fixture()
def keyed_server() -> Iterator[str]:
    with serving(create_app(FakePipeline(), ServeConfig(max_body_bytes=1024), api_key="s3cret-key")) as url:
        yield url


def test_without_a_key_every_endpoint_but_healthz_is_401(keyed_server: str) -> None:
    response = httpx.post(f"{keyed_server}/search", json={"query": "volcano"}, timeout=30)
    _assert_short_error(response, 401, "missing API key", "Authorization: Bearer", "CEINDEX_API_KEY")
    assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/docs", "/openapi.json"):
        _assert_short_error(httpx.get(f"{keyed_server}{path}", timeout=30), 401, "missing API key")
    assert httpx.get(f"{keyed_server}/healthz", timeout=30).status_code == 200


def test_a_wrong_key_is_401_and_the_right_one_searches(keyed_server: str) -> None:
    for header in ("Bearer wrong", "Bearer s3cret-key-and-more", "Basic s3cret-key", "s3cret-key"):
        response = httpx.post(f"{keyed_server}/search", json={"query": "volcano"}, headers={"Authorization": header}, timeout=30)
        _assert_short_error(response, 401, "wrong API key")
    response = httpx.post(f"{keyed_server}/search", json={"query": "volcano"},
                          headers={"Authorization": "Bearer s3cret-key"}, timeout=30)
    assert response.status_code == 200 and response.json()["results"][0]["query"] == "volcano"


def test_an_unauthenticated_client_cannot_make_the_server_read_a_big_body(keyed_server: str) -> None:
    response = httpx.post(f"{keyed_server}/search", content=b"z" * 5000, timeout=30)
    _assert_short_error(response, 401, "missing API key")


def test_the_api_key_comes_from_the_environment_never_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="CEINDEX_API_KEY, not the file"):
        load_settings(data={"serve": {"api_key": "in-the-file"}})
    monkeypatch.setenv("CEINDEX_API_KEY", "  ")
    with pytest.raises(ConfigError, match="set but empty"):
        api_key_from_env()
    monkeypatch.setenv("CEINDEX_API_KEY", "from-env")
    assert api_key_from_env() == "from-env"
    monkeypatch.delenv("CEINDEX_API_KEY")
    assert api_key_from_env() is None


def test_serve_limits_are_configuration_keys_with_flags() -> None:
    settings = load_settings(data={"serve": {"max_queries": 4, "request_timeout": 5}})
    assert settings.serve.max_queries == 4 and settings.serve.request_timeout == 5.0
    text = defaults_yaml()
    for line in ("max_body_bytes: 65536  # --max-body-bytes", "max_queries: 32  # --max-queries",
                 "max_concurrent: 2  # --max-concurrent", "request_timeout: 60.0  # --request-timeout"):
        assert line in text
    with pytest.raises(ConfigError, match="serve.max_concurrent must be >= 1"):
        create_app(FakePipeline(), ServeConfig(max_concurrent=0))


# --- error mapping -------------------------------------------------------------------------------
def _raising(exc: Exception) -> Callable[[Sequence[str], int], list[SearchResult]]:
    def search(queries: Sequence[str], k: int) -> list[SearchResult]:
        raise exc

    return search


@pytest.mark.parametrize(
    ("exc", "status", "fragment"),
    [
        (BackendError("search request to the cluster timed out after 30 s"), 504, "timed out after 30 s"),
        (BackendError("cluster is red: no shard available"), 503, "cluster is red"),
        (ConfigError("server_fusion is 'on' but this backend cannot fuse"), 503, "server_fusion is 'on'"),
        (InputError("query 0 cannot be tokenized"), 400, "cannot be tokenized"),
        (RuntimeError("CUDA out of memory at /secret/path/model.py:42"), 503, "internal error"),
        (KeyError("secret-internal-key"), 503, "internal error"),
    ],
)
def test_pipeline_failures_map_to_status_codes(exc: Exception, status: int, fragment: str) -> None:
    with serving(create_app(FakePipeline(_raising(exc)), ServeConfig())) as url:
        response = httpx.post(f"{url}/search", json={"query": "volcano"}, timeout=30)
        healthy = httpx.get(f"{url}/healthz", timeout=30)
    _assert_short_error(response, status, fragment)
    if status == 503 and fragment == "internal error":
        for leak in ("Traceback", "secret", type(exc).__name__, 'File "'):
            assert leak not in response.text
    assert healthy.status_code == 200


# --- overload, deadlines, disconnects ------------------------------------------------------------
class Gate:
    """A fake search that blocks until released (bounded), counting the searches that entered."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = threading.Event()

    def __call__(self, queries: Sequence[str], k: int) -> list[SearchResult]:
        self.entered += 1
        assert self.release.wait(timeout=20), "the test never released the fake search"
        return [SearchResult(query=q, hits=[], timings_ms={}) for q in queries]


def test_overload_is_503_with_retry_after_and_the_admitted_requests_succeed() -> None:
    blocker = Gate()
    app = create_app(FakePipeline(blocker), ServeConfig(max_concurrent=1, max_queued=1, request_timeout=30))
    with serving(app) as url:
        answers: dict[str, httpx.Response] = {}

        def send(name: str) -> None:
            answers[name] = httpx.post(f"{url}/search", json={"query": name}, timeout=30)

        threads = [threading.Thread(target=send, args=(name,), daemon=True) for name in ("running", "queued")]
        threads[0].start()
        _wait_until(lambda: blocker.entered == 1, 10, "the first search to start")
        threads[1].start()
        _wait_until(lambda: app.state.gate.admitted == 2, 10, "the second request to queue")
        refused = [httpx.post(f"{url}/search", json={"query": f"extra {i}"}, timeout=30) for i in range(4)]
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # not behind the search queue
        blocker.release.set()
        for thread in threads:
            thread.join(timeout=20)
        after = httpx.post(f"{url}/search", json={"query": "after"}, timeout=30)
    for response in refused:
        _assert_short_error(response, 503, "busy", "serve.max_concurrent")
        assert int(response.headers["retry-after"]) >= 1
    assert [answers[name].status_code for name in ("running", "queued")] == [200, 200]
    assert after.status_code == 200 and app.state.gate.admitted == 0


def _slow(seconds: float) -> Callable[[Sequence[str], int], list[SearchResult]]:
    def search(queries: Sequence[str], k: int) -> list[SearchResult]:
        time.sleep(seconds)
        return [SearchResult(query=q, hits=[], timings_ms={}) for q in queries]

    return search


def test_a_request_over_its_deadline_is_504_and_its_remaining_queries_are_dropped() -> None:
    pipeline = FakePipeline(_slow(0.6))
    chunks = 5
    queries = [f"q{i}" for i in range(QUERIES_PER_CHUNK * chunks)]
    with serving(create_app(pipeline, ServeConfig(max_queries=len(queries), request_timeout=1.0))) as url:
        started = time.monotonic()
        response = httpx.post(f"{url}/search", json={"queries": queries}, timeout=30)
        answered_after = time.monotonic() - started
        time.sleep(1.5)  # let the worker reach its next chunk boundary
        _assert_short_error(response, 504, "longer than 1 s", "serve.request_timeout")
        assert answered_after < 3
        assert 1 <= len(pipeline.calls) <= 2, "chunks after the deadline must not run"
        assert app_is_idle(url)


def app_is_idle(url: str) -> bool:
    return httpx.post(f"{url}/search", json={"query": "next"}, timeout=30).status_code == 200


def test_a_disconnected_client_stops_its_remaining_queries() -> None:
    pipeline = FakePipeline(_slow(1.0))
    queries = [f"q{i}" for i in range(QUERIES_PER_CHUNK * 4)]
    with serving(create_app(pipeline, ServeConfig(max_queries=len(queries), request_timeout=60))) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/search", json={"queries": queries}, timeout=httpx.Timeout(30, read=0.3))
        time.sleep(2.5)
        searched = sum(len(call) for call in pipeline.calls)
        assert searched == QUERIES_PER_CHUNK, f"searched {searched} queries; only the chunk running when the client left may finish"


# --- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_during_a_long_request_stops_the_server_promptly(built: Settings) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CEINDEX_API_KEY"}
    env.update(CEINDEX_HOME=str(built.home), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "ceindex.cli", "serve", "--index", "served", "--home", str(built.home),
               "--port", str(port), "--recall-n", "30", "--rerank-top", "30",  # re-rank every document: slow
               "--max-queries", "2000", "--max-body-bytes", "2000000", "--request-timeout", "300"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ceindex serve exited early: {proc.stdout.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "ceindex serve did not answer /healthz within 120 s"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        answer: list[httpx.Response | Exception] = []

        def slow_request() -> None:  # 1,500 long queries, 30 re-ranked pairs each: half a minute or more
            try:
                queries = [" ".join(["volcano honeybee battery"] * 10) + f" {i}" for i in range(1500)]
                answer.append(httpx.post(f"{url}/search", json={"queries": queries}, timeout=120))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                answer.append(exc)

        client = threading.Thread(target=slow_request, daemon=True)
        client.start()
        time.sleep(2.0)
        assert not answer, f"the slow request finished too early: {answer}"
        uploading = socket.create_connection(("127.0.0.1", port), timeout=20)  # its body never completes
        uploading.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=15)
        stopped_after = time.monotonic() - sent
        client.join(timeout=10)
        upload_answer = uploading.recv(4096)  # was uvicorn's text/plain 500 after its grace period
        uploading.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    log = proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
    assert code == 0, log[-2000:]
    assert stopped_after < 15
    assert answer and isinstance(answer[0], httpx.Response), answer
    _assert_short_error(answer[0], 503, "shutting down")
    assert upload_answer.startswith(b"HTTP/1.1 503") and b'"the server is shutting down"' in upload_answer, upload_answer


# --- found by the second review ------------------------------------------------------------------
def test_a_request_cut_at_its_deadline_is_never_a_partial_200() -> None:
    """When the event loop was busy as the deadline passed, the finished (cut) job was answered 200 with 8 of 12
    results."""
    import asyncio

    from search_pipeline.server import Refusal, SearchGate

    class SlowPipeline:
        def search_many(self, queries: Sequence[str], k: int) -> list[str]:
            time.sleep(0.2)
            return [f"result for {q}" for q in queries]

    async def scenario() -> Any:
        gate = SearchGate(SlowPipeline(), ServeConfig(request_timeout=0.3, max_concurrent=1))

        async def connected() -> bool:
            return False

        async def busy_loop() -> None:  # e.g. serialising another large response
            await asyncio.sleep(0.25)
            time.sleep(0.2)

        blocker = asyncio.create_task(busy_loop())
        try:
            return await gate.search([f"q{i}" for i in range(12)], 10, connected)
        except Refusal as refusal:
            return refusal
        finally:
            await blocker
            gate.stop(0)
            gate.join(2)

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, Exception) and outcome.status == 504, f"answered {outcome!r}"


def _raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_a_client_that_never_finishes_its_headers_is_disconnected(built: Settings) -> None:
    """Slow-header clients held their sockets for ever (uvicorn has no header deadline): 140 of them made the server
    unreachable."""
    app = create_app(SearchPipeline(built), ServeConfig(header_timeout=1.0, max_connections=16, max_concurrent=2, max_queued=8))
    with serving(app, as_served=True) as url:
        slow = _raw_connection(url)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and the blank line never comes
        begin = time.monotonic()
        assert slow.recv(1024) == b"", "the server should close a connection whose headers never end"
        assert time.monotonic() - begin < 5
        slow.close()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_an_api_key_with_a_trailing_newline_still_lets_the_right_client_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEINDEX_API_KEY", "secret123\n")  # a Kubernetes secret made from a file
    key = api_key_from_env()
    with serving(create_app(FakePipeline(), ServeConfig(), api_key=key)) as url:
        ok = httpx.get(f"{url}/openapi.json", headers={"Authorization": "Bearer secret123"})
    assert key == "secret123" and ok.status_code == 200


@pytest.mark.parametrize("k", ["3", True, 2.0])
def test_k_must_be_a_json_integer(keyed_server: str, k: Any) -> None:
    response = httpx.post(f"{keyed_server}/search", json={"query": "cells", "k": k},
                          headers={"Authorization": "Bearer s3cret-key"})
    assert response.status_code == 422 and "k" in response.json()["error"]


def test_serve_refuses_an_impossible_port_with_one_line(built: Settings) -> None:
    from click.testing import CliRunner

    from ceindex.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--home", str(built.home), "--index", "served", "--port", "99999"])
    assert result.exit_code == 2 and "99999 is not in the range 1<=x<=65535" in result.output


@pytest.mark.parametrize(("changes", "message"), [
    ({"header_timeout": 0.0}, "serve.header_timeout must be a positive number"),
    ({"max_connections": 4, "max_concurrent": 2, "max_queued": 8}, "serve.max_connections must be at least"),
])
def test_bad_serve_limits_are_config_errors(changes: dict, message: str) -> None:
    from dataclasses import replace

    from search_pipeline.server import validate_serve_config

    with pytest.raises(ConfigError, match=message):
        validate_serve_config(replace(ServeConfig(), **changes))
