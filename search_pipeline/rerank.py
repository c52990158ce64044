"""Re-ranking with the full cross-encoder: score the top candidates of each query, then order them.

The scorer itself (``CrossEncoderReranker``) is model core and lives in ``ceindex.models.scorer``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from ceindex.models.scorer import CrossEncoderReranker


def rerank_candidates(
    reranker: CrossEncoderReranker,
    queries: Sequence[str],
    candidates: Sequence[Sequence[str]],
    texts: Mapping[str, str],
    top: int,
) -> list[dict[str, float]]:
    """Re-rank scores of the first ``top`` candidate ids of each query (ids without text are skipped).

    All queries' pairs go through the model together, so batches stay full.
    """
    pairs: list[tuple[str, str]] = []
    owners: list[tuple[int, str]] = []
    for qi, (query, ids) in enumerate(zip(queries, candidates)):
        for doc_id in list(ids)[:top]:
            if doc_id in texts:
                pairs.append((query, texts[doc_id]))
                owners.append((qi, doc_id))
    scores = reranker.score(pairs)
    out: list[dict[str, float]] = [{} for _ in queries]
    for (qi, doc_id), score in zip(owners, scores.tolist()):
        out[qi][doc_id] = float(score)
    return out


def reranked_order(candidate_ids: Sequence[str], scores: Mapping[str, float]) -> list[str]:
    """Re-ranked candidates first (by re-rank score, ties by candidate order), then the rest in candidate order."""
    position = {doc_id: i for i, doc_id in enumerate(candidate_ids)}
    head = sorted(scores, key=lambda d: (-scores[d], position.get(d, len(position))))
    return head + [d for d in candidate_ids if d not in scores]


def windowed_order(candidate_ids: Sequence[str], scores: Mapping[str, float], window: int) -> list[str]:
    """The candidates cut into windows of ``window`` (fused order), each window ``reranked_order``-ed in itself.

    A page only re-ranks the windows it reaches, and a window's order never depends on another window, so the
    pages of one query are exact slices of one ranking (the first window alone is what re-ranking the top
    ``window`` candidates always gave).
    """
    ids = list(candidate_ids)
    out: list[str] = []
    for start in range(0, len(ids), window):
        block = ids[start:start + window]
        out += reranked_order(block, {d: scores[d] for d in block if d in scores})
    return out
