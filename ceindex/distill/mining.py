"""BM25 hard negatives: for each training query, documents BM25 ranks high that are NOT judged relevant.

BM25 is the embedded backend's (``ceindex.text``: bm25s, Lucene formula, k1 1.2 b 0.75, English stemmer, stop words),
so the negatives are the documents a hybrid search would actually confuse with the relevant ones.
"""
from __future__ import annotations

import logging
import random
from typing import Mapping, Sequence

from ceindex.text import BM25_B, BM25_K1, bm25_tokenize

log = logging.getLogger(__name__)


def bm25_candidates(
    doc_ids: Sequence[str], doc_texts: Sequence[str], queries: Mapping[str, str], depth: int
) -> dict[str, list[str]]:
    """Query id -> the BM25 top ``depth`` document ids, best first."""
    import bm25s

    retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
    retriever.index(bm25_tokenize(doc_texts), show_progress=False)
    qids = list(queries)
    k = min(depth, len(doc_ids))
    indices, _ = retriever.retrieve(bm25_tokenize([queries[q] for q in qids]), k=k, show_progress=False, n_threads=0)
    return {qid: [doc_ids[int(i)] for i in row] for qid, row in zip(qids, indices)}


def mine_hard_negatives(
    pairs: Sequence[tuple[str, str]],
    doc_ids: Sequence[str],
    docs: Mapping[str, str],
    queries: Mapping[str, str],
    relevant: Mapping[str, set[str]],
    *,
    depth: int = 10,
    seed: int = 42,
) -> list[tuple[str, str, str]]:
    """(query id, relevant doc id, negative doc id) per pair.

    The negative is drawn (seeded) from the query's BM25 top ``depth`` minus ALL its relevant documents;
    a query whose top ``depth`` is all relevant falls back to the deepest non-relevant hit of a longer list.
    """
    wanted = {q: queries[q] for q, _ in pairs}
    ids = list(doc_ids)
    found = bm25_candidates(ids, [docs[d] for d in ids], wanted, max(depth, 1) + 20)
    rng = random.Random(seed)
    triples: list[tuple[str, str, str]] = []
    for qid, pos in pairs:
        ranked = [d for d in found[qid] if d not in relevant[qid]]
        pool = ranked[:depth] or ranked
        if not pool:  # every hit is relevant (tiny corpora): any non-relevant document
            pool = [d for d in ids if d not in relevant[qid]][:depth]
        if not pool:
            log.warning("query %s: every document is relevant; no negative, pair skipped", qid)
            continue
        triples.append((qid, pos, rng.choice(pool)))
    log.info("mined %d BM25 hard negatives (drawn from the top %d non-relevant hits)", len(triples), depth)
    return triples
