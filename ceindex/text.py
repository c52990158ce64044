"""Text analysis shared by every layer: the BM25 tokeniser and parameters.

bm25s with Lucene's formula and OpenSearch's parameters (k1 1.2, b 0.75) on an English snowball stemmer with
English stop words, which ranks close to OpenSearch's ``english`` analyzer. The embedded backend indexes and
searches with it; distillation mines hard negatives and the benchmarks build BM25 runs with the same analysis.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

BM25_K1, BM25_B = 1.2, 0.75


def import_bm25s() -> Any:
    """bm25s, with its logger quietened (it sets itself to DEBUG on import and logs every index build)."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_tokenize(texts: Sequence[str]) -> Any:
    import Stemmer

    return import_bm25s().tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
