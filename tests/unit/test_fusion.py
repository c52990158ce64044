from __future__ import annotations

import pytest

from ceindex.backends.base import Hit
from search_pipeline.fusion import fuse, fuse_recall, minmax, rrf


def _run(*pairs):
    return [Hit(doc, score, rank) for rank, (doc, score) in enumerate(pairs, start=1)]


BM25 = _run(("a", 12.0), ("b", 9.0), ("c", 3.0))
KNN = _run(("c", 0.9), ("d", 0.8), ("a", 0.5))


def test_rrf_matches_hand_computation() -> None:
    scores = rrf([BM25, KNN], [1.0, 1.0], k=60)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert scores["d"] == pytest.approx(1 / 62)
    weighted = rrf([BM25, KNN], [2.0, 0.5], k=10)
    assert weighted["a"] == pytest.approx(2 / 11 + 0.5 / 13)


def test_minmax_matches_hand_computation() -> None:
    scores = minmax([BM25, KNN], [1.0, 1.0])
    assert scores["a"] == pytest.approx((1.0 + 0.001) / 2)  # top of BM25, bottom of k-NN (floored at 0.001)
    assert scores["b"] == pytest.approx((6 / 9) / 2)  # absent from k-NN: 0 from it
    assert scores["c"] == pytest.approx((0.001 + 1.0) / 2)
    assert scores["d"] == pytest.approx((0.3 / 0.4) / 2)
    weighted = minmax([BM25, KNN], [3.0, 1.0])
    assert weighted["b"] == pytest.approx(3 * (6 / 9) / 4)
    assert minmax([_run(("x", 5.0))], [1.0]) == {"x": 1.0}


def test_fuse_orders_and_breaks_ties_by_id() -> None:
    fused = fuse("rrf", [BM25, KNN], [1.0, 1.0], 60)
    assert [h.id for h in fused] == ["a", "c", "b", "d"]
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    assert [h.id for h in fuse("minmax", [BM25, KNN], [1.0, 1.0])] == ["a", "c", "d", "b"]


def test_fuse_recall_is_the_pipelines_fusion_step() -> None:
    from ceindex.config import SearchConfig

    assert fuse_recall(BM25, KNN, SearchConfig(knn=False)) == BM25
    assert fuse_recall(BM25, KNN, SearchConfig(bm25=False)) == KNN
    weighted = SearchConfig(fusion="minmax", bm25_weight=3.0, knn_weight=1.0)
    assert fuse_recall(BM25, KNN, weighted) == fuse("minmax", [BM25, KNN], [3.0, 1.0])
    assert fuse_recall(BM25, KNN, SearchConfig(rrf_k=10)) == fuse("rrf", [BM25, KNN], [1.0, 1.0], 10)
