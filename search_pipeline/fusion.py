"""Fusing ranked lists: reciprocal rank fusion and weighted min-max normalised sum.

Pure functions over ``{doc_id: score}`` lists, so the client-side fusion is easy to test against hand-made
numbers and against the server-side hybrid query.
"""
from __future__ import annotations

from typing import Sequence

from ceindex.backends.base import Hit
from ceindex.config import FUSIONS, SearchConfig  # the choices of search.fusion, defined once with the setting
from ceindex.errors import ConfigError

MINMAX_FLOOR = 0.001  # OpenSearch min-max normalisation maps the minimum here, not to 0


def rrf(runs: Sequence[Sequence[Hit]], weights: Sequence[float], k: int = 60) -> dict[str, float]:
    """score(d) = sum_i w_i / (k + rank_i(d)), over the runs that contain d."""
    fused: dict[str, float] = {}
    for hits, weight in zip(runs, weights):
        for hit in hits:
            fused[hit.id] = fused.get(hit.id, 0.0) + weight / (k + hit.rank)
    return fused


def minmax(runs: Sequence[Sequence[Hit]], weights: Sequence[float]) -> dict[str, float]:
    """Weighted mean of min-max normalised scores, exactly as OpenSearch's normalization processor does it.

    Per run, ``(s - min) / (max - min)``, with the minimum mapped to 0.001 rather than 0 and a run whose
    scores are all equal mapped to 1; a document missing from a run gets 0 from it; the combination is
    ``sum_i w_i * n_i(d) / sum_i w_i``. Mirroring the server keeps both fusion paths' rankings identical.
    """
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("min-max fusion needs at least one positive weight")
    fused: dict[str, float] = {}
    for hits, weight in zip(runs, weights):
        if not hits:
            continue
        scores = [h.score for h in hits]
        low, high = min(scores), max(scores)
        span = high - low
        for hit in hits:
            normalised = (hit.score - low) / span if span > 0 else 1.0
            fused[hit.id] = fused.get(hit.id, 0.0) + weight * (normalised or MINMAX_FLOOR) / total
    return fused


def fuse(method: str, runs: Sequence[Sequence[Hit]], weights: Sequence[float], rrf_k: int = 60) -> list[Hit]:
    """Fuse ``runs`` and return one ranked list (ties broken by document id for determinism)."""
    if method == "rrf":
        scores = rrf(runs, weights, rrf_k)
    elif method == "minmax":
        scores = minmax(runs, weights)
    else:
        raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}; got {method!r}")
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [Hit(doc_id, score, rank) for rank, (doc_id, score) in enumerate(ordered, start=1)]


def fuse_recall(bm25: Sequence[Hit], knn: Sequence[Hit], config: SearchConfig) -> list[Hit]:
    """The pipeline's fusion step for one query under ``config``: the BM25 list alone, the k-NN list alone, or both
    fused with its method, weights and RRF k. ``ceindex eval --tune-fusion-on`` ranks with this very function."""
    if config.bm25 and not config.knn:
        return list(bm25)
    if config.knn and not config.bm25:
        return list(knn)
    return fuse(config.fusion, (bm25, knn), (config.bm25_weight, config.knn_weight), config.rrf_k)
