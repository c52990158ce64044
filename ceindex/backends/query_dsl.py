"""The filter language (``ceindex.filters``) as OpenSearch / Elasticsearch query DSL, and the recall queries that
carry it. term, terms, range, exists and bool are the same in both engines, so both backends use this module.

Typed fields live under ``metadata.<name>`` in the index mapping (``mappings.index_body``); dates are compared as
epoch milliseconds (the mapping's date format accepts them), the same numbers the embedded store compares.
"""
from __future__ import annotations

from typing import Any, Sequence

from ceindex.filters import All, Any_, Exists, Filter, Not, Range, Term, Terms

PREFIX = "metadata."
BODY_FIELD = "body"
VECTOR_FIELD = "vector"


def filter_clause(node: Filter, prefix: str = PREFIX) -> dict[str, Any]:
    """One query-DSL clause (to be used in filter context: no scoring) for a parsed filter."""
    if isinstance(node, Term):
        return {"term": {prefix + node.field: node.value}}
    if isinstance(node, Terms):
        return {"terms": {prefix + node.field: list(node.values)}}
    if isinstance(node, Range):
        return {"range": {prefix + node.field: node.bounds()}}
    if isinstance(node, Exists):
        return {"exists": {"field": prefix + node.field}}
    if isinstance(node, All):
        return {"bool": {"filter": [filter_clause(c, prefix) for c in node.clauses]}}
    if isinstance(node, Any_):
        return {"bool": {"should": [filter_clause(c, prefix) for c in node.clauses], "minimum_should_match": 1}}
    if isinstance(node, Not):
        return {"bool": {"must_not": [filter_clause(node.clause, prefix)]}}
    raise TypeError(f"not a filter: {node!r}")


def match_query(text: str, filter: Filter | None = None) -> dict[str, Any]:
    """BM25 on the body field; with a filter, a ``bool`` whose filter clause restricts without scoring."""
    match = {"match": {BODY_FIELD: text}}
    if filter is None:
        return match
    return {"bool": {"must": [match], "filter": [filter_clause(filter)]}}


def knn_query(vector: Sequence[float], k: int, filter: Filter | None = None) -> dict[str, Any]:
    """k-NN on the vector field; with a filter, the engine's efficient filtering (``knn.<field>.filter``: the
    Lucene engine searches only matching documents, exactly when few match), not a post-filter."""
    body: dict[str, Any] = {"vector": [float(x) for x in vector], "k": k}
    if filter is not None:
        body["filter"] = filter_clause(filter)
    return {"knn": {VECTOR_FIELD: body}}

