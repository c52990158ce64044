"""The indexer: read a corpus, embed it, write BM25 text and vectors into a backend."""
from indexer.build import BuildSummary, build_index

__all__ = ["BuildSummary", "build_index"]
