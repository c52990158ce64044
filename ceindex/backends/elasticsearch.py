"""Elasticsearch 8 backend (elasticsearch-py 8): the same builds and guarantees as the OpenSearch backend
(``ClusterBackend``), with Elasticsearch's index template and its ``knn`` search (``num_candidates``).

Recall is BM25 and k-NN as two searches in one ``_msearch`` each, fused by ceindex (RRF or min-max) and
re-ranked by the CE: Elasticsearch's own hybrid fusion (``rrf`` / ``linear`` retrievers) and its
``text_similarity_reranker`` are paid (Enterprise) features, so ``server_fusion`` is always False here.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ceindex.backends.base import BuildState, Hit, IndexSettings
from ceindex.backends.cluster import RETRY_STATUSES, ClusterBackend, with_backoff
from ceindex.backends.cluster_lock import ClientErrors
from ceindex.backends.query_dsl import VECTOR_FIELD, filter_clause, match_query
from ceindex.config import OpenSearchConfig, opensearch_credentials
from ceindex.errors import BackendError
from ceindex.filters import Filter
from mappings.elasticsearch import TEXT_ANALYZERS, elasticsearch_index_body

logger = logging.getLogger(__name__)



def _knn_clause(vector: Sequence[float], k: int, num_candidates: int, filter: Filter | None) -> dict[str, Any]:
    clause: dict[str, Any] = {"field": VECTOR_FIELD, "query_vector": [float(x) for x in vector], "k": k,
                              "num_candidates": num_candidates}
    if filter is not None:
        clause["filter"] = filter_clause(filter)
    return clause


class _RetryableStatus(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {response.meta.status}")
        self.response = response


def _backoff_transport(retries: int) -> type:
    from elastic_transport import ConnectionError as ETConnectionError
    from elastic_transport import ConnectionTimeout, Transport

    class BackoffTransport(Transport):
        """elastic-transport retries at once; this one waits 0.5 s, 1 s, 2 s, ... (at most 10 s) between attempts
        on timeouts, lost connections, 429 and 502-504, and logs one line per retry."""

        def perform_request(self, method: str, target: str, **kwargs: Any) -> Any:
            kwargs["max_retries"] = 0

            def once() -> Any:
                response = super(BackoffTransport, self).perform_request(method, target, **kwargs)
                if response.meta.status in RETRY_STATUSES:
                    raise _RetryableStatus(response)
                return response

            def retryable(exc: Exception) -> bool:
                return isinstance(exc, (ETConnectionError, ConnectionTimeout, _RetryableStatus))

            try:
                return with_backoff(once, retries, retryable, f"Elasticsearch {method} {target}")
            except _RetryableStatus as exc:  # out of retries: the client raises the status as usual
                return exc.response

    return BackoffTransport


def make_client(config: OpenSearchConfig) -> Any:
    """An elasticsearch-py 8 client that retries timeouts, 429 and 5xx with exponential backoff."""
    from elasticsearch import Elasticsearch

    if not config.url:
        raise BackendError("no cluster URL given (use --cluster URL)")
    return Elasticsearch(
        hosts=[config.url],
        basic_auth=opensearch_credentials(),
        verify_certs=config.verify_certs,
        ssl_show_warn=config.verify_certs,
        ca_certs=config.ca_certs,
        request_timeout=config.timeout,
        max_retries=0,
        transport_class=_backoff_transport(config.max_retries),
        http_compress=True,
    )


def client_errors() -> ClientErrors:
    import elastic_transport as et
    import elasticsearch as es

    return ClientErrors(
        not_found=es.NotFoundError, conflict=es.ConflictError, bad_request=es.BadRequestError,
        unauthorized=es.AuthenticationException, forbidden=es.AuthorizationException,
        timeout=et.ConnectionTimeout, tls=et.TlsError, connection=et.ConnectionError,
        api=(es.ApiError, et.TransportError, es.UnsupportedProductError),
    )


class ElasticsearchBackend(ClusterBackend):
    ENGINE = "Elasticsearch"
    MGET_SOURCE_PARAM = "source_includes"

    def __init__(
        self,
        config: OpenSearchConfig,
        *,
        chunk_docs: int = 500,
        chunk_bytes: int = 10 * 1024 * 1024,
        vector_index: str = "hnsw",
        client: Any | None = None,
    ) -> None:
        self.config = config
        self.vector_index = vector_index
        super().__init__(client or make_client(config), config.url or "", client_errors(),
                         max_retries=config.max_retries, chunk_docs=chunk_docs, chunk_bytes=chunk_bytes)

    def _streaming_bulk(self) -> Any:
        from elasticsearch import helpers

        return helpers.streaming_bulk

    def ping(self) -> dict[str, Any]:
        # ``GET /`` answers 405 in some distributions (the integ-test zip); the node list names the versions
        nodes = self._call("connecting", self.client.nodes.info, node_id="_local", metric="_none")
        return {"version": {"number": next(iter(nodes.get("nodes", {}).values()), {}).get("version", "")}}

    def text_analyzer(self) -> str:
        """The best BM25 analyzer the cluster has (see ``mappings.elasticsearch.TEXT_ANALYZERS``)."""
        for name in TEXT_ANALYZERS:
            try:
                self.client.indices.analyze(body={"analyzer": name, "text": "running"})
                return name
            except self.errors.bad_request:  # "failed to find global analyzer"
                continue
            except self.errors.api as exc:
                raise self._translate(exc, "checking the text analyzers") from exc
        raise AssertionError("the standard analyzer is always there")

    def create(self, state: BuildState, settings: IndexSettings) -> None:
        analyzer = self.text_analyzer()
        if analyzer == "standard":
            logger.warning("%s has neither the 'english' analyzer nor ceindex's plugin: BM25 runs on standard tokens "
                           "with English stop words, without stemming (lower BM25 quality)", self.url)
        body = elasticsearch_index_body(
            dims=state.encoder.dims,
            meta=state.to_meta(),
            m=settings.knn_m,
            ef_construction=settings.knn_ef_construction,
            shards=settings.shards,
            vector_index=self.vector_index,
            fields=state.fields,
            analyzer=analyzer,
        )
        self._call(f"creating index {state.physical}", self.client.indices.create, index=state.physical, body=body)

    # --- searching --------------------------------------------------------------------------
    def bm25(self, name: str, queries: Sequence[str], n: int, filter: Filter | None = None) -> list[list[Hit]]:
        bodies = [{"size": n, "_source": False, "query": match_query(q, filter)} for q in queries]  # bool.filter
        return self._msearch(name, bodies, "BM25 search")

    def knn(
        self, name: str, vectors: np.ndarray, n: int, ef_search: int = 100, filter: Filter | None = None
    ) -> list[list[Hit]]:
        # num_candidates is the HNSW search queue per shard (ef_search); k = n nearest come back. A filter goes
        # into knn.filter: HNSW searches among the matching documents only, so n of them come back.
        bodies = [{"size": n, "_source": False, "knn": _knn_clause(v, n, max(n, ef_search), filter)}
                  for v in np.atleast_2d(vectors)]
        results = self._msearch(name, bodies, "k-NN search")
        # Elasticsearch's cosine scores are (1 + cos) / 2; report cosine like the other backends.
        return [[Hit(h.id, 2.0 * h.score - 1.0, h.rank) for h in hits] for hits in results]
