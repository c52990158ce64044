"""Hybrid recall (BM25 + k-NN), fusion and cross-encoder re-ranking over a ceindex index."""
from search_pipeline.pipeline import SearchHit, SearchPipeline, SearchResult

__all__ = ["SearchHit", "SearchPipeline", "SearchResult"]
