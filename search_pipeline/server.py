"""HTTP JSON API over the search pipeline (FastAPI): POST /search, GET /healthz, OpenAPI at /docs.

Every failure a client can cause is a 4xx with a short ``{"error": "..."}`` message that never echoes the
request back beyond a short excerpt; cluster trouble is a 503 or 504, never a bare 500.

Hostile or merely heavy traffic is bounded (``serve`` section of the configuration):

* the body is limited before parsing (``max_body_bytes``; declared and streamed bytes both count) -> 413,
  and must arrive within ``request_timeout`` -> 408;
* a request carries at most ``max_queries`` queries -> 413;
* at most ``max_concurrent`` searches run at once on worker threads, at most ``max_queued`` more wait for
  one; beyond that -> 503 with ``Retry-After``;
* a request's queries run in chunks of :data:`QUERIES_PER_CHUNK`; between chunks the worker stops when the
  request's ``request_timeout`` passed (-> 504), its client disconnected, or the server is shutting down;
* with ``batching`` the re-rank pairs of concurrent searches are scored together by one scoring thread
  (``search_pipeline.batcher``); a search waits for its scores only until its deadline, disconnect or shutdown;
* ``score_cache_size`` > 0 keeps cross-encoder scores of repeated pairs (``search_pipeline.score_cache``);
* ``GET /healthz`` runs on the event loop from an index description refreshed at most every
  :data:`HEALTH_TTL_S` on a thread of its own, and responses are rendered on worker threads, so a health check
  never waits behind searches, the models or a big response;
* with an API key (``$CEINDEX_API_KEY`` for ``ceindex serve``) every endpoint but ``GET /healthz`` needs
  ``Authorization: Bearer <key>`` -> 401 otherwise.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ceindex.config import API_KEY_ENV, ServeConfig
from ceindex.errors import BackendError, CeindexError, ConfigError, InputError
from search_pipeline.batcher import Abandoned, RerankBatcher, waiting_limited_by
from search_pipeline.pipeline import MAX_K, SearchPipeline, SearchResult
from search_pipeline.score_cache import CachedScorer, ScoreCache, scorer_fingerprint

logger = logging.getLogger(__name__)

QUERIES_PER_CHUNK = 4  # queries searched together between two deadline/disconnect checks
POLL_S = 0.1  # how often a waiting request checks whether its client is still there
RETRY_AFTER_S = 2  # what an overloaded or stopping server asks clients to wait
SHUTDOWN_GRACE_S = 3.0  # in-flight searches get this long after SIGTERM, then stop at their next chunk
EXCERPT_CHARS = 60
MAX_REPORTED_ERRORS = 5
MAX_MESSAGE_CHARS = 600
FASTAPI_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for bodies json.loads rejects oddly
HEALTH_TTL_S = 1.0  # /healthz describes the index as it was at most this long ago
HEALTH_TIMEOUT_S = 5.0  # ... and answers 503 when the backend cannot describe it within this long
MAX_BATCH_WAIT_MS = 1000.0


class SearchRequest(BaseModel):
    query: str | None = Field(None, description="One query.", examples=["do statins lower cholesterol"])
    queries: list[str] | None = Field(None, description="Several queries (batched: one encode, one msearch).")
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="Results per query.")
    offset: int = Field(0, ge=0, strict=True, description="Skip this many results (pages: offset + k <= search.max_depth).")
    filter: dict[str, Any] | None = Field(None, description='Only documents passing this filter, e.g. {"term": {"lang": "en"}} (term, terms, range, exists, all, any, not).')
    model_config = {"extra": "forbid"}


class SearchResponse(BaseModel):
    index: str
    results: list[SearchResult]


class Refusal(Exception):
    """A request answered with ``status`` and a short message (overload, limits, timeouts, auth)."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# --- configuration ------------------------------------------------------------------------------
def validate_serve_config(config: ServeConfig) -> None:
    for name in ("max_body_bytes", "max_queries", "max_concurrent"):
        if getattr(config, name) < 1:
            raise ConfigError(f"serve.{name} must be >= 1, got {getattr(config, name)}")
    if config.max_queued < 0:
        raise ConfigError(f"serve.max_queued must be >= 0, got {config.max_queued}")
    for name in ("request_timeout", "header_timeout"):
        value = getattr(config, name)
        if not value > 0 or math.isinf(value):
            raise ConfigError(f"serve.{name} must be a positive number of seconds, got {value}")
    if config.max_connections < config.max_concurrent + config.max_queued:
        raise ConfigError("serve.max_connections must be at least serve.max_concurrent + serve.max_queued")
    if not 0 <= config.batch_wait_ms <= MAX_BATCH_WAIT_MS:
        raise ConfigError(f"serve.batch_wait_ms must be between 0 and {MAX_BATCH_WAIT_MS:g} ms, got {config.batch_wait_ms}")
    if config.batch_max_pairs < 1:
        raise ConfigError(f"serve.batch_max_pairs must be >= 1, got {config.batch_max_pairs}")
    if config.score_cache_size < 0:
        raise ConfigError(f"serve.score_cache_size must be >= 0 (0 = off), got {config.score_cache_size}")


def api_key_from_env() -> str | None:
    """The API key clients must send, from ``$CEINDEX_API_KEY``; None when unset."""
    key = os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        raise ConfigError(f"${API_KEY_ENV} is set but empty; unset it to serve without authentication")
    return key.strip()  # a key read from a file often ends in a newline; HTTP trims header values anyway


# --- messages -----------------------------------------------------------------------------------
def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with anything UTF-8 cannot carry (lone surrogates) escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": excerpt(message, MAX_MESSAGE_CHARS)}, headers=dict(headers or {}))


def _describe_validation_error(error: Mapping[str, Any]) -> str:
    where = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    if not where and kind in ("model_attributes_type", "dict_type"):
        return 'the body must be a JSON object (Content-Type: application/json) such as {"query": "...", "k": 10}'
    if not where and kind == "missing":
        return 'the body is empty; send a JSON object such as {"query": "...", "k": 10}'
    field_name = ".".join(excerpt(part, 40) for part in where) or "body"
    return f"{field_name}: {error.get('msg', 'invalid value')}"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """A short summary of pydantic errors: field names and messages, never the offending input."""
    parts = [_describe_validation_error(error) for error in errors[:MAX_REPORTED_ERRORS]]
    more = len(errors) - MAX_REPORTED_ERRORS
    return "invalid request: " + "; ".join(parts) + (f"; and {more} more error(s)" if more > 0 else "")


def status_for(exc: CeindexError) -> int:
    """400 for bad input, 504 when the cluster timed out, 503 for any other server-side failure."""
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, BackendError) and "timed out" in str(exc):
        return 504
    return 503


# --- the ASGI guard: authentication and body size, before any parsing -----------------------------
class RequestGuard:
    """Pure ASGI middleware: checks the API key, then reads at most ``max_body_bytes`` of the body."""

    def __init__(self, app: Any, *, max_body_bytes: int, body_timeout: float, api_key: str | None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.api_key = api_key.encode("utf-8") if api_key is not None else None
        self.stopping = stopping

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_auth(scope) or self._check_declared_length(scope)
        if refusal is None:
            body, refusal = await self._read_body_in_time(receive)
        if refusal is not None:
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else {}
            if refusal.status == 401:
                headers["WWW-Authenticate"] = "Bearer"
            if refusal.status in (408, 413) or refusal.status == 503:
                headers["Connection"] = "close"  # the rest of the body is never read
            await _error_response(refusal.status, refusal.message, headers)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_auth(self, scope: Mapping[str, Any]) -> Refusal | None:
        if self.api_key is None or (scope["method"] == "GET" and scope["path"] == "/healthz"):
            return None
        header = _header(scope, b"authorization") or b""
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key):
            return None
        reason = "missing" if not header else "wrong"
        return Refusal(401, f"{reason} API key: send 'Authorization: Bearer <key>' (the server's ${API_KEY_ENV})")

    def _check_declared_length(self, scope: Mapping[str, Any]) -> Refusal | None:
        declared = _header(scope, b"content-length")
        if declared is None:
            return None
        if not declared.strip().isdigit():
            return Refusal(400, "Content-Length is not a number")
        if int(declared) > self.max_body_bytes:
            return self._too_large()
        return None

    async def _read_body_in_time(self, receive: Callable) -> tuple[bytes, Refusal | None]:
        """The body, unless it is too large, too slow, or the server starts shutting down while it trickles in."""
        reading = asyncio.ensure_future(self._read_body(receive))
        end = time.monotonic() + self.body_timeout
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=min(POLL_S, max(0.0, end - time.monotonic())))
                if done:
                    return reading.result()
                if self.stopping():
                    return b"", Refusal(503, "the server is shutting down", retry_after=RETRY_AFTER_S)
                if time.monotonic() >= end:
                    return b"", Refusal(408, f"the request body did not arrive within {self.body_timeout:g} s "
                                             "(serve.request_timeout)")
        finally:
            reading.cancel()

    async def _read_body(self, receive: Callable) -> tuple[bytes, Refusal | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", Refusal(499, "client disconnected")
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return b"", self._too_large()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _too_large(self) -> Refusal:
        return Refusal(413, f"request body too large: the limit is {self.max_body_bytes} bytes (serve.max_body_bytes)")


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A ``receive`` that hands out the already-read body once, then defers to the server (disconnects)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# --- bounded execution: admission, worker threads, deadlines --------------------------------------
class _Cut(Exception):
    """A search stopped between chunks (deadline, shutdown or the client left): it has no complete answer."""


@dataclass
class _Job:
    queries: list[str]
    k: int
    deadline: float
    options: dict[str, Any] = field(default_factory=dict)  # search_many's filter / offset, only when given
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)


class SearchGate:
    """Runs searches on ``max_concurrent`` worker threads with a bounded queue, deadlines and cancellation.

    A slot is held until the worker really finishes (not when the client is answered), so abandoned work
    still counts against the limits. Workers are daemon threads: a search stuck in a model or a cluster
    call cannot keep the process alive after shutdown.
    """

    def __init__(self, pipeline: Any, config: ServeConfig) -> None:
        self._pipeline = pipeline
        self._config = config
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._stop_by = math.inf  # monotonic time after which every running search stops
        self._threads = [
            threading.Thread(target=self._work_loop, name=f"ceindex-search-{i}", daemon=True)
            for i in range(config.max_concurrent)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def admitted(self) -> int:
        """Requests running or queued now."""
        with self._lock:
            return self._admitted

    @property
    def stopping(self) -> bool:
        return self._stop_by != math.inf

    def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Refuse new searches; running ones get ``grace`` seconds, then stop at their next chunk."""
        if self.stopping:
            return
        self._stop_by = time.monotonic() + grace
        for _ in self._threads:
            self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the workers to finish; True when they all did."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    async def search(self, queries: list[str], k: int, is_disconnected: Callable[[], Awaitable[bool]],
                     **options: Any) -> list[Any]:
        if self.stopping:
            raise Refusal(503, "the server is shutting down", retry_after=RETRY_AFTER_S)
        self._admit()
        job = _Job(queries, k, deadline=time.monotonic() + self._config.request_timeout, options=options)
        job.future.add_done_callback(self._release)
        self._jobs.put(job)
        waiting = asyncio.wrap_future(job.future)
        try:
            return await self._wait(job, waiting, is_disconnected)
        finally:
            job.cancelled.set()
            if not waiting.done():
                waiting.cancel()  # also drops the job from the queue if no worker took it yet

    def _admit(self) -> None:
        limit = self._config.max_concurrent + self._config.max_queued
        with self._lock:
            if self._admitted >= limit:
                logger.warning("overloaded: %d searches running or queued; refusing one", self._admitted)
                raise Refusal(
                    503,
                    f"the server is busy ({limit} searches running or queued; serve.max_concurrent + serve.max_queued)",
                    retry_after=RETRY_AFTER_S,
                )
            self._admitted += 1

    def _release(self, _: Future) -> None:
        with self._lock:
            self._admitted -= 1

    async def _wait(self, job: _Job, waiting: asyncio.Future, is_disconnected: Callable[[], Awaitable[bool]]) -> list[Any]:
        while True:
            remaining = self._deadline(job) - time.monotonic()
            if remaining <= 0:
                raise self._timeout_refusal(job)
            done, _ = await asyncio.wait({waiting}, timeout=min(POLL_S, remaining))
            if done:
                try:
                    return waiting.result()
                except _Cut:
                    raise self._timeout_refusal(job) from None
            if await is_disconnected():
                logger.info("client disconnected; dropping the rest of its %d queries", len(job.queries))
                raise Refusal(499, "client disconnected")

    def _timeout_refusal(self, job: _Job) -> Refusal:
        if self.stopping and time.monotonic() >= self._stop_by:
            return Refusal(503, "the server is shutting down", retry_after=RETRY_AFTER_S)
        timeout = self._config.request_timeout
        if not (job.future.running() or job.future.done()):
            return Refusal(503, f"the server is busy: no search slot within {timeout:g} s (serve.request_timeout)",
                           retry_after=RETRY_AFTER_S)
        logger.warning("a request of %d queries ran past %g s; dropping its remaining queries", len(job.queries), timeout)
        return Refusal(504, f"the search took longer than {timeout:g} s (serve.request_timeout); "
                            f"send fewer queries per request")

    def _deadline(self, job: _Job) -> float:
        return min(job.deadline, self._stop_by)

    def _work_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._run(job))
            except BaseException as exc:  # handed to the waiting request, which maps it to a status
                job.future.set_exception(exc)

    def _run(self, job: _Job) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(job.queries), QUERIES_PER_CHUNK):
            if job.cancelled.is_set() or time.monotonic() >= self._deadline(job):
                logger.info("stopped a request after %d of %d queries", start, len(job.queries))
                raise _Cut()  # an incomplete answer is never a success
            try:
                with waiting_limited_by(lambda: job.cancelled.is_set() or time.monotonic() >= self._deadline(job)):
                    chunk = self._pipeline.search_many(job.queries[start:start + QUERIES_PER_CHUNK], job.k, **job.options)
            except Abandoned:
                raise _Cut() from None
            results.extend(chunk)
        return results


# --- re-rank scoring for serve: score cache in front of the micro-batcher -----------------------
@dataclass
class RerankStack:
    """What ``serve`` re-ranks through: the pipeline using it, and its batcher and cache (None when off)."""

    pipeline: Any
    batcher: RerankBatcher | None = None
    cache: ScoreCache | None = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.batcher is not None:
            out["batcher"] = self.batcher.stats().to_dict()
        if self.cache is not None:
            out["score_cache"] = self.cache.stats().to_dict()
        return out

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def scores_depend_on_batch(search: Any) -> bool:
    """torch's and ONNX Runtime's dynamic int8 quantise activations over the whole padded batch: a pair's score
    then changes with its batch companions (by up to ~1.7 logits on the fixture CE), so requests must not share
    batches or cached scores. OpenVINO's int8 compresses weights only, and float32 differs in the last bits."""
    return getattr(search, "rerank_dtype", "float32") == "int8" and getattr(search, "rerank_runtime", "torch") in (
        "torch", "onnx")


def rerank_stack(pipeline: Any, config: ServeConfig) -> RerankStack:
    """Wrap ``pipeline``'s re-ranker for serving: cached pairs are answered at once, the rest go to the batcher
    (or, without batching, to the model on the search's own thread). The Python API's pipeline is untouched."""
    search = getattr(pipeline, "config", None)
    if not (getattr(search, "rerank", False) and hasattr(pipeline, "with_reranker")):
        return RerankStack(pipeline)  # nothing re-ranks (or a stand-in pipeline)
    if not (config.batching or config.score_cache_size):
        return RerankStack(pipeline)
    if scores_depend_on_batch(search):
        logger.warning("re-ranking with %s int8 quantises activations per batch, so a pair's score depends on the "
                       "pairs batched with it: micro-batching and the score cache are off (each request scores "
                       "its own pairs, as the Python API does); openvino int8 or float32 allow both",
                       search.rerank_runtime)
        return RerankStack(pipeline)
    reranker = pipeline.reranker
    scorer: Any = reranker
    batcher = cache = None
    if config.batching:
        batcher = scorer = RerankBatcher(reranker, wait_s=config.batch_wait_ms / 1000, max_pairs=config.batch_max_pairs)
    fingerprint = scorer_fingerprint(reranker, dtype=search.rerank_dtype) if config.score_cache_size else None
    if fingerprint is not None:
        cache = ScoreCache(config.score_cache_size)
        scorer = CachedScorer(scorer, cache, fingerprint)
    logger.info("re-ranking through %s", ", ".join(name for name, on in (("the micro-batcher", batcher),
                                                                          ("the score cache", cache)) if on) or "the model")
    return RerankStack(pipeline.with_reranker(scorer), batcher, cache)


class HealthInfo:
    """The index description ``/healthz`` answers with: re-read at most every :data:`HEALTH_TTL_S` seconds, on a
    thread of its own (never a search thread), so a health check does not queue behind searches or the models."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceindex-health")
        self._value: dict[str, Any] | None = None
        self._read_at = -math.inf
        self._reading: asyncio.Future | None = None

    async def get(self) -> dict[str, Any]:
        if self._value is not None and time.monotonic() - self._read_at < HEALTH_TTL_S:
            return self._value
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().run_in_executor(self._executor, self._read)
        try:
            return await asyncio.wait_for(asyncio.shield(self._reading), HEALTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Refusal(503, f"the index could not be described within {HEALTH_TIMEOUT_S:g} s",
                          retry_after=RETRY_AFTER_S) from None

    def _read(self) -> dict[str, Any]:
        info = self._pipeline.backend.info(self._pipeline.index)
        value = {"status": "ok", "index": info.name, "physical": info.physical, "documents": info.count,
                 "encoder": info.encoder.to_dict(), "fields": getattr(info, "fields", {})}  # what filters may use
        self._value, self._read_at = value, time.monotonic()
        return value

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def render_response(index: str, results: list[SearchResult]) -> bytes:
    """The /search answer as JSON bytes (run on a worker thread: a big answer must not hold up the event loop)."""
    return SearchResponse(index=index, results=results).model_dump_json().encode("utf-8")


# --- the app ------------------------------------------------------------------------------------
def _queries_of(request: SearchRequest, max_queries: int) -> list[str]:
    if (request.query is None) == (request.queries is None):
        raise InputError("give exactly one of 'query' (a string) or 'queries' (a list of strings)")
    queries = [request.query] if request.query is not None else list(request.queries or [])
    if not queries:
        raise InputError("'queries' is empty")
    if len(queries) > max_queries:
        raise Refusal(413, f"too many queries: {len(queries)}; the limit is {max_queries} per request (serve.max_queries)")
    return queries


def create_app(pipeline: SearchPipeline, config: ServeConfig | None = None, *, api_key: str | None = None) -> FastAPI:
    """The FastAPI app. ``config`` defaults to the pipeline's ``serve`` settings; ``api_key`` None = no auth."""
    if config is None:
        settings = getattr(pipeline, "settings", None)
        config = settings.serve if settings is not None else ServeConfig()
    validate_serve_config(config)
    stack = rerank_stack(pipeline, config)
    pipeline = stack.pipeline
    gate = SearchGate(pipeline, config)
    health = HealthInfo(pipeline)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        gate.stop(grace=0)
        stack.close()
        health.close()

    app = FastAPI(
        title="ceindex search",
        version="1",
        description="Hybrid recall (BM25 + k-NN over early-layer cross-encoder vectors), fusion, cross-encoder re-ranking.",
        lifespan=lifespan,
    )
    app.state.gate = gate
    app.state.rerank = stack
    app.state.serve_config = config
    app.add_middleware(RequestGuard, max_body_bytes=config.max_body_bytes, body_timeout=config.request_timeout,
                       api_key=api_key, stopping=lambda: gate.stopping)

    @app.exception_handler(CeindexError)
    async def _ceindex_error(_: Request, exc: CeindexError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("search failed (%d): %s", status, exc)
        return _error_response(status, str(exc))

    @app.exception_handler(Refusal)
    async def _refusal(_: Request, exc: Refusal) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return _error_response(exc.status, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and message == FASTAPI_PARSE_ERROR:
            message = "the body could not be parsed as JSON (not UTF-8, nested too deeply, or a number too long)"
        return _error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error("unexpected error %s while serving a request", error_id, exc_info=exc)
        return _error_response(503, f"search failed with an internal error (id {error_id} in the server log)")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        serving = stack.stats()
        return await health.get() | ({"serving": serving} if serving else {})

    @app.post("/search", response_model=SearchResponse)
    async def search(body: SearchRequest, request: Request) -> Response:
        queries = _queries_of(body, config.max_queries)
        # The pipeline's own checks, once for the whole request: a bad query is refused before any chunk runs,
        # and the message numbers it by its position in the request, not in its chunk.
        pipeline.validate(queries, body.k, body.offset)
        options: dict[str, Any] = {}
        if body.filter is not None:  # parsed and checked once, before any chunk runs (a bad one is a 400)
            options["filter"] = pipeline.parse_filter(body.filter)
        if body.offset:
            options["offset"] = body.offset
        results = await gate.search(queries, body.k, request.is_disconnected, **options)
        if len(results) != len(queries):  # never answer 200 with some queries missing
            raise Refusal(503, f"the search answered {len(results)} of {len(queries)} queries", retry_after=RETRY_AFTER_S)
        content = await run_in_threadpool(render_response, pipeline.index, results)
        return Response(content, media_type="application/json")

    return app


def run_server(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM; in-flight searches are cut short so shutdown is quick."""
    import uvicorn

    gate: SearchGate = app.state.gate

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            gate.stop()
            super().handle_exit(sig, frame)

    config = server_config(app, host, port, log_level=log_level)
    with _stopping_signals_return():
        _Server(config).run()
    if not gate.join(timeout=SHUTDOWN_GRACE_S):
        logger.warning("a search was still running at exit; it is abandoned")


def server_config(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> Any:
    """The uvicorn configuration ``serve`` runs with: connection limit, header deadline, keep-alive, grace."""
    import uvicorn

    serve: ServeConfig = app.state.serve_config
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_header_deadline_protocol(serve),
                          limit_concurrency=serve.max_connections, timeout_keep_alive=int(min(5, serve.header_timeout)),
                          timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 2)


def _header_deadline_protocol(config: ServeConfig) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head within
    ``header_timeout`` seconds of connecting or of its previous response (slow-header clients would otherwise
    hold sockets and file descriptors for ever; uvicorn has no such limit of its own)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._head_wait = getattr(self, "_head_wait", 0) + 1  # only the latest wait may close the connection
            self.loop.call_later(config.header_timeout, self._close_without_request_head, self._head_wait)

        def _close_without_request_head(self, wait: int) -> None:
            waiting_for_head = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
            if wait == self._head_wait and waiting_for_head and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


@contextmanager
def _stopping_signals_return() -> Iterator[None]:
    """After its graceful shutdown uvicorn re-raises the stop signal under the previous handler; with the
    default handlers that kills the process (SIGTERM: status 143) although it stopped cleanly. Noting the
    signal instead lets ``ceindex serve`` return and exit 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(sig: int, _: Any) -> None:
        logger.info("stopped by %s", signal.Signals(sig).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
