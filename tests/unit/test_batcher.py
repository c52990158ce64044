"""serve's re-rank micro-batcher (issue 15 part 4): one scoring thread, each caller exactly its own scores,
waits bounded by the caller's stop condition, errors and shutdown handed to every waiting caller."""
from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np
import pytest

from search_pipeline.batcher import Abandoned, RerankBatcher, waiting_limited_by


def _value(pair: tuple[str, str]) -> float:
    query, text = pair
    return len(query) + len(text) / 1000


class RecordingScorer:
    """Scores a pair by its lengths; records each call's pairs; ``hold`` blocks calls until released."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail = fail

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        self.entered.set()
        assert self.release.wait(timeout=30), "the test never released the scorer"
        if self.fail is not None:
            raise self.fail
        return np.array([_value(p) for p in pairs], dtype=np.float32)


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _requests(n: int) -> list[list[tuple[str, str]]]:
    return [[(f"query {i}" + "?" * i, f"doc {j}" * (j + 1)) for j in range(3 + i % 4)] for i in range(n)]


def _in_threads(batcher: RerankBatcher, requests: list[list[tuple[str, str]]]) -> tuple[dict, list]:
    answers: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            answers[i] = batcher.score(requests[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    return answers, errors, threads  # type: ignore[return-value]


def test_concurrent_callers_each_get_exactly_their_own_scores_from_shared_batches() -> None:
    scorer = RecordingScorer()
    scorer.release.clear()
    batcher = RerankBatcher(scorer, wait_s=0.005, max_pairs=1000)
    requests = _requests(12)
    requests[5] = list(requests[3])  # two callers with the same pairs: scored once, both answered
    try:
        first, first_errors, first_threads = _in_threads(batcher, requests[:1])
        _wait_until(scorer.entered.is_set, "the first batch to start")
        answers, errors, threads = _in_threads(batcher, requests[1:])
        _wait_until(lambda: batcher.queued == 11, "the other 11 callers to queue behind the first batch")
        scorer.release.set()
        for thread in first_threads + threads:
            thread.join(timeout=30)
    finally:
        batcher.close()
    assert first_errors == errors == []
    got = {0: first[0]} | {i + 1: a for i, a in answers.items()}
    for i, pairs in enumerate(requests):
        assert got[i].tolist() == [np.float32(_value(p)) for p in pairs], f"caller {i} got another caller's scores"
    assert scorer.calls[0] == requests[0]  # alone: exactly its own pairs
    assert len(scorer.calls) == 2  # the 11 that queued meanwhile: one batch
    distinct = {p for pairs in requests[1:] for p in pairs}
    assert sorted(scorer.calls[1]) == sorted(distinct) and len(scorer.calls[1]) == len(distinct)
    stats = batcher.stats()
    assert (stats.batches, stats.requests, stats.largest_batch) == (2, 12, 11)
    assert stats.pairs == sum(map(len, requests)) and stats.scored == len(requests[0]) + len(distinct)


def test_a_batch_never_takes_more_than_max_pairs_unless_one_request_is_bigger() -> None:
    scorer = RecordingScorer()
    scorer.release.clear()
    batcher = RerankBatcher(scorer, wait_s=0.005, max_pairs=10)
    requests = [[("big", f"d{j}") for j in range(15)]] + [[(f"q{i}", f"d{j}") for j in range(4)] for i in range(5)]
    try:
        blocker, _, blocker_threads = _in_threads(batcher, [[("first", "x")]])
        _wait_until(scorer.entered.is_set, "the first batch to start")
        answers, errors, threads = _in_threads(batcher, requests[:1])
        _wait_until(lambda: batcher.queued == 1, "the big request to queue")
        more, more_errors, more_threads = _in_threads(batcher, requests[1:])
        _wait_until(lambda: batcher.queued == 6, "all requests to queue")
        scorer.release.set()
        for thread in blocker_threads + threads + more_threads:
            thread.join(timeout=30)
    finally:
        batcher.close()
    assert errors == more_errors == []
    assert [len(call) for call in scorer.calls] == [1, 15, 8, 8, 4]  # 15 alone; then 4-pair requests, 2 a batch


def test_a_caller_that_must_stop_is_dropped_from_the_queue_and_never_scored() -> None:
    scorer = RecordingScorer()
    scorer.release.clear()
    batcher = RerankBatcher(scorer, wait_s=0.0, max_pairs=100)
    stop = threading.Event()
    outcome: list[BaseException] = []
    try:
        blocker, _, blocker_threads = _in_threads(batcher, [[("first", "x")]])
        _wait_until(scorer.entered.is_set, "the first batch to start")

        def impatient() -> None:
            with waiting_limited_by(stop.is_set):
                try:
                    batcher.score([("late", "y")])
                except Abandoned as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=impatient)
        thread.start()
        _wait_until(lambda: batcher.queued == 1, "the impatient caller to queue")
        stop.set()
        thread.join(timeout=30)
        assert outcome and batcher.queued == 0  # it stopped waiting while the scorer was still busy
        scorer.release.set()
        for t in blocker_threads:
            t.join(timeout=30)
    finally:
        batcher.close()
    assert scorer.calls == [[("first", "x")]] and batcher.stats().dropped == 1


def test_a_scoring_error_reaches_every_caller_of_its_batch_and_the_batcher_goes_on() -> None:
    scorer = RecordingScorer(fail=RuntimeError("CUDA out of memory"))
    batcher = RerankBatcher(scorer, wait_s=0.0, max_pairs=100)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.score([("q", "d")])
        scorer.fail = None
        assert batcher.score([("q", "d")]).tolist() == [np.float32(_value(("q", "d")))]
    finally:
        batcher.close()


def test_closing_answers_waiting_callers_and_refuses_new_ones() -> None:
    scorer = RecordingScorer()
    scorer.release.clear()
    batcher = RerankBatcher(scorer, wait_s=0.0, max_pairs=100)
    first, _, first_threads = _in_threads(batcher, [[("first", "x")]])
    _wait_until(scorer.entered.is_set, "the first batch to start")
    answers, errors, threads = _in_threads(batcher, [[("waiting", "y")]])
    _wait_until(lambda: batcher.queued == 1, "a caller to queue")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [type(e) for e in errors] == [Abandoned] and answers == {}
    scorer.release.set()  # the batch being scored finishes and is answered
    closer.join(timeout=30)
    for thread in first_threads:
        thread.join(timeout=30)
    assert first[0].tolist() == [np.float32(_value(("first", "x")))]
    with pytest.raises(Abandoned, match="shutting down"):
        batcher.score([("after", "z")])


def test_no_pairs_need_no_scoring_thread_round_trip() -> None:
    scorer = RecordingScorer()
    batcher = RerankBatcher(scorer, wait_s=0.0, max_pairs=1)
    try:
        assert batcher.score([]).shape == (0,) and scorer.calls == []
    finally:
        batcher.close()
