"""Micro-batching of re-rank work across concurrent requests (``ceindex serve``).

Each search thread hands its (query, document) pairs to one :class:`RerankBatcher` and waits on a future; one
scoring thread takes every request that arrived within ``wait_s`` of the oldest waiting one (or until
``max_pairs`` pairs are waiting), scores all their pairs in one call of the cross-encoder (length-sorted batches
over the union, a pair shared by two requests scored once) and hands each request exactly its own scores.
While a batch is being scored the next requests queue up, so under load batches fill by themselves; an idle
server adds at most ``wait_s`` to a request.

A request scored alone gets the very scores ``CrossEncoderReranker.score`` gives its pairs; scored together
with others, its pairs sit in other batch shapes, which changes float32 scores in the last bits (about 1e-6,
what CPU matrix kernels give for another batch size). Dynamic int8 (torch, ONNX Runtime) quantises activations
per batch and moves scores far more, so ``serve`` does not batch (nor cache) those
(``server.scores_depend_on_batch``).

Every wait is bounded: a search thread waits only while :func:`waiting_limited_by`'s ``should_stop`` says no
(the HTTP gate passes the request's deadline, its client's disconnect and shutdown), and a request that stops
waiting before its pairs were taken is dropped from the queue. How many requests can queue here is bounded by
the searches admitted (``serve.max_concurrent``): overload is refused before a search starts.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from search_pipeline.score_cache import PairScorer

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting search checks whether it should stop waiting

_should_stop: ContextVar[Callable[[], bool] | None] = ContextVar("ceindex_rerank_should_stop", default=None)


class Abandoned(Exception):
    """A search stopped waiting for its re-rank scores (deadline, client gone, shutdown): it has no answer."""


@contextmanager
def waiting_limited_by(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within this block (on this thread), a wait for re-rank scores ends with :class:`Abandoned` as soon as
    ``should_stop()`` is true."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


@dataclass
class BatcherStats:
    batches: int = 0
    requests: int = 0
    pairs: int = 0  # pairs asked for
    scored: int = 0  # pairs the model scored (shared pairs once)
    largest_batch: int = 0  # requests in the fullest batch
    dropped: int = 0  # requests that stopped waiting before their pairs were scored

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {"mean_requests_per_batch": self.requests / self.batches if self.batches else 0.0}


@dataclass(eq=False)  # compared by identity: two requests may carry equal pairs
class _Request:
    pairs: Sequence[tuple[str, str]]
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class RerankBatcher:
    """``score(pairs)``, like the re-ranker's, through one scoring thread that batches concurrent callers."""

    def __init__(self, scorer: PairScorer, *, wait_s: float, max_pairs: int) -> None:
        if wait_s < 0 or max_pairs < 1:
            raise ValueError(f"a batcher needs wait_s >= 0 and max_pairs >= 1, got {wait_s} and {max_pairs}")
        self.scorer = scorer
        self.wait_s = wait_s
        self.max_pairs = max_pairs
        self._queue: deque[_Request] = deque()
        self._queued_pairs = 0
        self._ready = threading.Condition()
        self._closed = False
        self._stats = BatcherStats()
        self._thread = threading.Thread(target=self._loop, name="ceindex-rerank-batcher", daemon=True)
        self._thread.start()

    # --- the callers' side ------------------------------------------------------------------------
    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The scores of ``pairs`` in order, scored in a batch with whatever other requests are waiting."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        request = self._submit(pairs)
        should_stop = _should_stop.get()
        while True:
            try:
                return request.future.result(timeout=None if should_stop is None else POLL_S)
            except FutureTimeout:
                if should_stop is not None and should_stop():
                    self._drop(request)
                    raise Abandoned("stopped waiting for re-rank scores") from None
            except CancelledError:
                raise Abandoned("the re-rank batcher is shutting down") from None

    @property
    def queued(self) -> int:
        """Requests waiting for the scoring thread (not counting the batch being scored)."""
        with self._ready:
            return len(self._queue)

    def stats(self) -> BatcherStats:
        with self._ready:
            return BatcherStats(**asdict(self._stats))

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new work, drop what waits, let the batch being scored finish (up to ``timeout`` s)."""
        with self._ready:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._queued_pairs = 0
            self._ready.notify_all()
        for request in waiting:
            request.future.cancel()
        self._thread.join(timeout)

    def _submit(self, pairs: Sequence[tuple[str, str]]) -> _Request:
        request = _Request(pairs)
        with self._ready:
            if self._closed:
                raise Abandoned("the re-rank batcher is shutting down")
            self._queue.append(request)
            self._queued_pairs += len(pairs)
            self._ready.notify_all()
        return request

    def _drop(self, request: _Request) -> None:
        with self._ready:
            if request in self._queue:
                self._queue.remove(request)
                self._queued_pairs -= len(request.pairs)
                self._stats.dropped += 1
        request.future.cancel()  # a no-op when its batch is already being scored: the result is then unused

    # --- the scoring thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._score(batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch: waits for a first request, then until ``wait_s`` after it arrived or ``max_pairs``
        pairs wait; takes requests in arrival order up to ``max_pairs`` pairs (always at least one)."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            close_at = self._queue[0].arrived + self.wait_s
            while self._queued_pairs < self.max_pairs and not self._closed:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            batch: list[_Request] = []
            taken = 0
            while self._queue and (not batch or taken + len(self._queue[0].pairs) <= self.max_pairs):
                request = self._queue.popleft()
                batch.append(request)
                taken += len(request.pairs)
            self._queued_pairs -= taken
            return batch

    def _score(self, batch: list[_Request]) -> None:
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        if len(live) == 1:  # alone: exactly the pairs the caller gave, as the re-ranker alone would score them
            unique, slots = list(live[0].pairs), [list(range(len(live[0].pairs)))]
        else:
            unique, slots = _shared_pairs([request.pairs for request in live])
        try:
            scores = np.asarray(self.scorer.score(unique), dtype=np.float32)
        except BaseException as exc:  # handed to every waiting search, which maps it to a status
            logger.error("re-ranking a batch of %d requests failed: %s", len(live), exc)
            for request in live:
                request.future.set_exception(exc)
            return
        with self._ready:
            self._record(live, unique)
        for request, where in zip(live, slots):
            request.future.set_result(scores[where])

    def _record(self, live: list[_Request], unique: list[tuple[str, str]]) -> None:
        self._stats.batches += 1
        self._stats.requests += len(live)
        self._stats.pairs += sum(len(request.pairs) for request in live)
        self._stats.scored += len(unique)
        self._stats.largest_batch = max(self._stats.largest_batch, len(live))


def _shared_pairs(requests: list[Sequence[tuple[str, str]]]) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """The distinct pairs of all requests (first-seen order) and, per request, where each of its pairs is."""
    index: dict[tuple[str, str], int] = {}
    slots = []
    for pairs in requests:
        slots.append([index.setdefault(tuple(pair), len(index)) for pair in pairs])  # type: ignore[arg-type]
    return list(index), slots
