"""serve's cross-encoder score cache (issue 15 part 3): keyed by the model's fingerprint, bounded, exact, thread-safe."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from ceindex.models.scorer import CrossEncoderReranker
from search_pipeline.score_cache import CachedScorer, ScoreCache, pair_digest, scorer_fingerprint
from tests.unit._tiny_models import build_tiny_ce

PAIRS = [("volcano ash", "ash from the volcano fell on the town"), ("battery", "lithium battery charging"),
         ("volcano ash", "lithium battery charging"), ("tea", "green tea and black tea")]


class CountingScorer:
    """Scores a pair by a fixed function of its texts; counts the pairs it was asked for."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.asked: list[tuple[str, str]] = []

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.asked += list(pairs)
        return np.array([len(q) * 0.5 + len(d) * 0.01 + self.offset for q, d in pairs], dtype=np.float32)


@pytest.fixture(scope="module")
def two_tiny_ces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny cross-encoders that differ only in their weights (one weight nudged)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    first = build_tiny_ce("bert", tmp_path_factory.mktemp("ce-a"))
    second = tmp_path_factory.mktemp("ce-b")
    shutil.copytree(first, second, dirs_exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(second)
    with torch.no_grad():
        model.classifier.bias += 0.25
    model.save_pretrained(second)
    return first, second


def test_the_fingerprint_names_the_weights_length_dtype_and_runtime(two_tiny_ces: tuple[Path, Path]) -> None:
    first, second = (CrossEncoderReranker(str(path), max_length=64) for path in two_tiny_ces)
    shorter = CrossEncoderReranker(str(two_tiny_ces[0]), max_length=32)
    prints = {
        "a": scorer_fingerprint(first, dtype="float32"),
        "b (other weights)": scorer_fingerprint(second, dtype="float32"),
        "a cut at 32": scorer_fingerprint(shorter, dtype="float32"),
        "a in int8": scorer_fingerprint(first, dtype="int8"),
    }
    assert all(isinstance(p, str) and len(p) == 64 for p in prints.values())
    assert len(set(prints.values())) == len(prints), prints
    assert scorer_fingerprint(CrossEncoderReranker(str(two_tiny_ces[0]), max_length=64), dtype="float32") == prints["a"]


def test_two_models_never_share_entries(two_tiny_ces: tuple[Path, Path]) -> None:
    first, second = (CrossEncoderReranker(str(path), max_length=64) for path in two_tiny_ces)
    cache = ScoreCache(100)
    cached = [CachedScorer(model, cache, scorer_fingerprint(model, dtype="float32")) for model in (first, second)]
    a, b = (scorer.score(PAIRS) for scorer in cached)
    assert len(cache) == 2 * len(PAIRS)  # one entry per (model, pair)
    assert np.array_equal(a, first.score(PAIRS)) and np.array_equal(b, second.score(PAIRS))
    assert not np.allclose(a, b)  # the nudged bias moves every score: had b come from a's entries, they'd be equal
    assert cache.stats().hits == 0


def test_cached_answers_equal_uncached_and_skip_the_model(two_tiny_ces: tuple[Path, Path]) -> None:
    model = CrossEncoderReranker(str(two_tiny_ces[0]), max_length=64)
    counting = CountingScorer()
    counting.score = lambda pairs: (counting.asked.extend(pairs), model.score(pairs))[1]  # type: ignore[method-assign]
    scorer = CachedScorer(counting, ScoreCache(100), "model-a")
    uncached = model.score(PAIRS)
    first = scorer.score(PAIRS)
    again = scorer.score(list(reversed(PAIRS)))
    assert np.array_equal(first, uncached)  # all misses: scored in one call, as the model alone scores them
    assert np.array_equal(again, uncached[::-1])  # all hits: the very same floats
    assert len(counting.asked) == len(PAIRS)  # the repeat never reached the model
    partial = scorer.score([PAIRS[0], ("new query", PAIRS[0][1])])
    assert partial[0] == uncached[0] and counting.asked[-1] == ("new query", PAIRS[0][1])
    assert scorer.cache.stats().hits == len(PAIRS) + 1


def test_eviction_keeps_at_most_capacity_entries_least_recently_used_first() -> None:
    cache = ScoreCache(3)
    digests = [pair_digest(f"query {i}", "text") for i in range(10)]
    cache.put_many("m", digests[:3], [0.0, 1.0, 2.0])
    assert cache.get_many("m", digests[:1]) == [0.0]  # 0 is now the most recently used
    cache.put_many("m", digests[3:10], [float(i) for i in range(3, 10)])
    assert len(cache) == 3 and cache.stats().evictions == 7
    assert cache.get_many("m", digests) == [None] * 7 + [7.0, 8.0, 9.0]
    cache.put_many("m", digests[:1], [0.0])
    cache.get_many("m", digests[8:9])
    cache.put_many("m", digests[1:2], [1.0])  # evicts 7, the least recently used; 8 was just read
    assert cache.get_many("m", [digests[i] for i in (0, 1, 7, 8, 9)]) == [0.0, 1.0, None, 8.0, None]


def test_the_entries_hold_digests_never_the_texts() -> None:
    cache = ScoreCache(10)
    scorer = CachedScorer(CountingScorer(), cache, "m")
    long_text = "word " * 20_000
    scorer.score([("q", long_text)])
    ((fingerprint, digest),) = list(cache._entries)  # noqa: SLF001 - what an entry holds is the point here
    assert fingerprint == "m" and isinstance(digest, bytes) and len(digest) == 16


def test_pair_digests_separate_query_from_text() -> None:
    assert pair_digest("ab", "c") != pair_digest("a", "bc")
    assert pair_digest("a", "b") == pair_digest("a", "b")
    assert pair_digest("\ud800", "x") != pair_digest("?", "x")  # lone surrogates hash instead of raising


def test_a_scorer_without_a_model_folder_is_not_cached() -> None:
    assert scorer_fingerprint(CountingScorer()) is None
    named = CountingScorer()
    named.cache_key = "fake-model-v1"  # type: ignore[attr-defined]
    assert scorer_fingerprint(named) == scorer_fingerprint(named) is not None


def test_zero_or_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        ScoreCache(0)


def test_threads_sharing_one_cache_get_exact_scores_and_it_stays_bounded() -> None:
    inner = CountingScorer()
    scorer = CachedScorer(inner, ScoreCache(20), "m")
    pairs = [(f"query {i % 7}", f"document {i % 5}") for i in range(400)]  # 35 distinct pairs: hits and evictions
    expected = CountingScorer().score(pairs)
    wrong: list[int] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for start in range(seed, len(pairs), 7):
                chunk = pairs[start:start + 5]
                if not np.array_equal(scorer.score(chunk), expected[start:start + 5]):
                    wrong.append(start)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and wrong == []
    stats = scorer.cache.stats()
    assert stats.entries <= 20 and stats.hits > 0 and stats.evictions > 0 and stats.hits + stats.misses == sum(
        len(pairs[s:s + 5]) for seed in range(8) for s in range(seed, len(pairs), 7))
