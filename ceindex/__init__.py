"""ceindex: turn a cross-encoder into a fast first-stage retriever on OpenSearch."""
__version__ = "0.1.0"
