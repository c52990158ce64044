"""OpenSearch backend (opensearch-py): bulk loading with retries, alias swaps, BM25 and k-NN via msearch."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ceindex.backends.base import BuildState, Hit, IndexSettings
from ceindex.backends.cluster import RETRY_STATUSES, ClusterBackend, with_backoff
from ceindex.backends.cluster_lock import ClientErrors
from ceindex.backends.query_dsl import knn_query, match_query
from ceindex.backends.names import searchable_name
from ceindex.config import FUSIONS, OpenSearchConfig, opensearch_credentials
from ceindex.errors import BackendError
from ceindex.filters import Filter
from mappings import index_body

logger = logging.getLogger(__name__)



def _backoff_transport() -> type:
    from opensearchpy import Transport
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import ConnectionTimeout, TransportError

    class BackoffTransport(Transport):
        """opensearch-py's transport retries at once (a dead node saw 5 retries within a millisecond); this one
        waits 0.5 s, 1 s, 2 s, ... (at most 10 s) between attempts and logs one line per retry."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.retries, self.max_retries = self.max_retries, 0

        def perform_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            def retryable(exc: Exception) -> bool:
                return isinstance(exc, (OSConnectionError, ConnectionTimeout)) or (
                    isinstance(exc, TransportError) and exc.status_code in RETRY_STATUSES)

            return with_backoff(lambda: super(BackoffTransport, self).perform_request(method, url, *args, **kwargs),
                                self.retries, retryable, f"OpenSearch {method} {url}")

    return BackoffTransport


def make_client(config: OpenSearchConfig) -> Any:
    """An opensearch-py client that retries timeouts, 429 and 5xx with exponential backoff."""
    from opensearchpy import OpenSearch

    if not config.url:
        raise BackendError("no OpenSearch URL given (use --opensearch URL)")
    credentials = opensearch_credentials()
    return OpenSearch(
        hosts=[config.url],
        http_auth=credentials,
        verify_certs=config.verify_certs,
        ssl_show_warn=config.verify_certs,
        ca_certs=config.ca_certs,
        timeout=config.timeout,
        max_retries=config.max_retries,
        retry_on_timeout=True,
        retry_on_status=RETRY_STATUSES,
        transport_class=_backoff_transport(),
        http_compress=True,
    )


def client_errors() -> ClientErrors:
    from opensearchpy import exceptions as osx

    return ClientErrors(
        not_found=osx.NotFoundError, conflict=osx.ConflictError, bad_request=osx.RequestError,
        unauthorized=osx.AuthenticationException, forbidden=osx.AuthorizationException,
        timeout=osx.ConnectionTimeout, tls=osx.SSLError, connection=osx.ConnectionError,
        api=(osx.TransportError, osx.ImproperlyConfigured),
    )


class OpenSearchBackend(ClusterBackend):
    ENGINE = "OpenSearch"

    def __init__(
        self,
        config: OpenSearchConfig,
        *,
        chunk_docs: int = 500,
        chunk_bytes: int = 10 * 1024 * 1024,
        client: Any | None = None,
    ) -> None:
        self.config = config
        super().__init__(client or make_client(config), config.url or "", client_errors(),
                         max_retries=config.max_retries, chunk_docs=chunk_docs, chunk_bytes=chunk_bytes)
        self._neural_search: bool | None = None
        self._neural_search_version = ""
        self._pipelines: set[str] = set()

    def _streaming_bulk(self) -> Any:
        from opensearchpy import helpers

        return helpers.streaming_bulk

    def create(self, state: BuildState, settings: IndexSettings) -> None:
        body = index_body(
            dims=state.encoder.dims,
            meta=state.to_meta(),
            m=settings.knn_m,
            ef_construction=settings.knn_ef_construction,
            shards=settings.shards,
            fields=state.fields,
        )
        self._call(f"creating index {state.physical}", self.client.indices.create, index=state.physical, body=body)

    # --- searching --------------------------------------------------------------------------
    def bm25(self, name: str, queries: Sequence[str], n: int, filter: Filter | None = None) -> list[list[Hit]]:
        bodies = [{"size": n, "_source": False, "query": match_query(q, filter)} for q in queries]
        return self._msearch(name, bodies, "BM25 search")

    def knn(
        self, name: str, vectors: np.ndarray, n: int, ef_search: int = 100, filter: Filter | None = None
    ) -> list[list[Hit]]:
        # The Lucene engine's candidate queue is k; asking for k = max(n, ef_search) and keeping n is ef_search.
        # A filter goes inside the knn query (Lucene's efficient filtering), so n matching documents come back.
        k = max(n, ef_search)
        bodies = [{"size": n, "_source": False, "query": knn_query(v, k, filter)} for v in np.atleast_2d(vectors)]
        results = self._msearch(name, bodies, "k-NN search")
        # Lucene cosinesimil scores are (1 + cos) / 2; report cosine like the embedded backend.
        return [[Hit(h.id, 2.0 * h.score - 1.0, h.rank) for h in hits] for hits in results]

    # --- server-side hybrid fusion (neural-search plugin) ------------------------------------
    def _has_neural_search(self) -> bool:
        if self._neural_search is None:
            plugins = self._call("listing plugins", self.client.cat.plugins, format="json")
            versions = {p.get("version") for p in plugins if p.get("component") == "opensearch-neural-search"}
            self._neural_search = bool(versions)
            self._neural_search_version = ", ".join(sorted(str(v) for v in versions))
        return self._neural_search

    def _primary_shards(self, name: str) -> tuple[str, int]:
        """The physical index ``name`` points at now and its primary shards: one request, not cached by ``name``
        (an alias swap can point it at a build with another shard count; the pipeline asks once per decision)."""
        found = self._call(f"reading the settings of {name}", self.client.indices.get_settings, index=name,
                           name="index.number_of_shards")
        shards = max(int(body["settings"]["index"]["number_of_shards"]) for body in found.values())
        return ", ".join(sorted(found)), shards

    def server_fusion_caveat(self, name: str, method: str) -> str | None:
        """Server-side fusion ranks like ceindex's only on a one-shard index: neural-search (2.19.1 measured) runs
        the hybrid query per shard and fuses the shards' lists (RRF ranks per shard: neural-search #1703; min-max
        over the union of the shards' top lists), so on several shards both methods ranked differently from the
        fusion of the global BM25 and k-NN lists (tests/cluster/test_fusion_shards.py)."""
        physical, shards = self._primary_shards(name)
        if shards <= 1:
            return None
        return (f"index '{name}' ({physical}) has {shards} primary shards and neural-search {self._neural_search_version or '?'} "
                f"fuses '{method}' per shard (RRF ranks per shard, neural-search #1703; min-max over the shards' "
                "union), which ranks differently from fusing the global BM25 and k-NN lists")

    def server_fusion(self, method: str, weights: Sequence[float], rrf_k: int) -> bool:
        if method == "rrf" and any(w != 1.0 for w in weights):
            return False  # the 2.19 score-ranker processor has no per-query weights
        return method in FUSIONS and self._has_neural_search()

    def _search_pipeline(self, method: str, weights: Sequence[float], rrf_k: int) -> str:
        """Create (once) and verify the search pipeline a hybrid query must run through."""
        if method == "minmax":
            # OpenSearch wants weights summing to 1; scaling all weights does not change the ranking.
            total = float(sum(weights)) or 1.0
            weights = [round(w / total, 6) for w in weights]
            pipeline_id = "ceindex-minmax-" + "-".join(f"{w:g}" for w in weights)
            body: dict[str, Any] = {"description": "ceindex: min-max normalised weighted sum", "phase_results_processors": [
                {"normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [float(w) for w in weights]}},
                }}]}
        else:
            pipeline_id = f"ceindex-rrf-{rrf_k}"
            body = {"description": "ceindex: reciprocal rank fusion", "phase_results_processors": [
                {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": rrf_k}}}]}
        if pipeline_id in self._pipelines:
            return pipeline_id
        pipelines = self.client.search_pipeline
        self._call(f"creating search pipeline {pipeline_id}", pipelines.put, id=pipeline_id, body=body)
        stored = self._call(f"checking search pipeline {pipeline_id}", pipelines.get, id=pipeline_id)
        processors = stored.get(pipeline_id, {}).get("phase_results_processors", [])
        if processors != body["phase_results_processors"]:
            raise BackendError(
                f"search pipeline {pipeline_id} on {self.url} does not hold the expected processors; refusing to run a "
                "hybrid query without it (scores would be unnormalised)"
            )
        self._pipelines.add(pipeline_id)
        return pipeline_id

    def hybrid(
        self, name: str, queries: Sequence[str], vectors: np.ndarray, n: int, method: str,
        weights: Sequence[float], rrf_k: int, ef_search: int = 100, filter: Filter | None = None,
    ) -> list[list[Hit]]:
        if not self.server_fusion(method, weights, rrf_k):
            raise BackendError(f"OpenSearch at {self.url} cannot fuse '{method}' server-side (neural-search plugin missing)")
        pipeline_id = self._search_pipeline(method, weights, rrf_k)
        searchable_name(name)
        results = []
        for query, vector in zip(queries, np.atleast_2d(vectors)):
            body = {
                "size": n,
                "_source": False,
                "query": {"hybrid": {"queries": [  # the filter restricts both sub-queries
                    match_query(query, filter),
                    knn_query(vector, max(n, ef_search), filter),
                ]}},
            }
            response = self._call("hybrid search", self.client.search, index=name, body=body,
                                  params={"search_pipeline": pipeline_id})
            # ties broken by document id, as the client-side fusion does, so pages and both fusion paths agree
            hits = sorted(response["hits"]["hits"], key=lambda h: (-float(h["_score"]), h["_id"]))
            results.append([Hit(h["_id"], float(h["_score"]), rank) for rank, h in enumerate(hits, start=1)])
        return results
