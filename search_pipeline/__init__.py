"""Hybrid recall (BM25 + k-NN), fusion and cross-encoder re-ranking over a ceindex index.

The public facade: evaluation drives the pipeline through these names only (tests/unit/test_architecture.py);
the HTTP app is ``search_pipeline.server``.
"""
from search_pipeline.fusion import fuse, fuse_recall
from search_pipeline.pipeline import STAGES, SearchHit, SearchPipeline, SearchResult
from search_pipeline.rerank import rerank_candidates, reranked_order

__all__ = ["STAGES", "SearchHit", "SearchPipeline", "SearchResult", "fuse", "fuse_recall", "rerank_candidates",
           "reranked_order"]
