"""OpenSearch backend (opensearch-py): bulk loading with retries, alias swaps, BM25 and k-NN via msearch."""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Any, Iterator, Sequence

import numpy as np

from ceindex.backends.base import COMPLETE, Backend, BuildState, Hit, IndexInfo, IndexSettings
from ceindex.backends.cluster_lock import ClusterBuildLock
from ceindex.backends.query_dsl import knn_query, match_query
from ceindex.backends.names import index_name, is_physical_of, searchable_name
from ceindex.config import FUSIONS, OpenSearchConfig, opensearch_credentials
from ceindex.data.corpus import Document, Rejected
from ceindex.models.base import EncoderDescription
from ceindex.errors import BackendError
from ceindex.filters import Filter
from ceindex.redact import redact
from mappings import index_body

logger = logging.getLogger(__name__)

SOURCE_FIELDS = ["doc_id", "title", "text", "metadata"]
RETRY_STATUSES = (429, 502, 503, 504)


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
            for attempt in range(self.retries + 1):
                try:
                    return super().perform_request(method, url, *args, **kwargs)
                except TransportError as exc:
                    retryable = isinstance(exc, (OSConnectionError, ConnectionTimeout)) or exc.status_code in RETRY_STATUSES
                    if not retryable or attempt == self.retries:
                        raise
                    delay = min(10.0, 0.5 * 2**attempt)
                    logger.warning("OpenSearch %s %s failed (%s); retry %d of %d in %.1f s",
                                   method, url, type(exc).__name__, attempt + 1, self.retries, delay)
                    time.sleep(delay)
            raise AssertionError("unreachable")

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


def _translate(exc: Exception, url: str, action: str) -> BackendError:
    url = redact(url)
    from opensearchpy import exceptions as osx

    if isinstance(exc, osx.AuthenticationException):
        return BackendError(
            f"OpenSearch at {url} refused the credentials while {action} (HTTP 401); "
            "set CEINDEX_OPENSEARCH_USER and CEINDEX_OPENSEARCH_PASSWORD"
        )
    if isinstance(exc, osx.AuthorizationException):
        return BackendError(f"OpenSearch at {url} denied permission while {action} (HTTP 403): {exc.error}")
    if isinstance(exc, osx.ConnectionTimeout):
        return BackendError(f"OpenSearch at {url} timed out while {action}; raise --timeout or check the cluster")
    if isinstance(exc, osx.SSLError) and _plain_http_answer(exc):
        return BackendError(
            f"{url} does not speak TLS (the server answered in plain HTTP) while {action}; "
            f"use {url.replace('https://', 'http://', 1)} instead"
        )
    if isinstance(exc, osx.SSLError):
        return BackendError(
            f"TLS failure talking to {url} while {action}: {exc.info if hasattr(exc, 'info') else exc}; "
            "pass the cluster's CA bundle with --ca-certs (or --no-verify-certs for a throwaway test cluster)"
        )
    if isinstance(exc, osx.ConnectionError):
        return BackendError(f"cannot reach OpenSearch at {url} while {action}: is the cluster running?")
    if isinstance(exc, osx.TransportError):
        return BackendError(redact(f"OpenSearch at {url} failed while {action}: HTTP {exc.status_code} {exc.error}: {exc.info}"))
    return BackendError(redact(f"OpenSearch at {url} failed while {action}: {exc}"))


def _plain_http_answer(exc: Exception) -> bool:
    """Whether a TLS handshake failed because the port speaks plain HTTP (OpenSSL: wrong version number)."""
    text = f"{exc} {getattr(exc, 'info', '')}".lower()
    return "wrong version number" in text or "record layer failure" in text or "http request" in text


class OpenSearchBackend(Backend):
    def __init__(
        self,
        config: OpenSearchConfig,
        *,
        chunk_docs: int = 500,
        chunk_bytes: int = 10 * 1024 * 1024,
        client: Any | None = None,
    ) -> None:
        self.config = config
        self.chunk_docs = chunk_docs
        self.chunk_bytes = chunk_bytes
        self.url = redact(config.url or "")  # for messages: never the credentials
        self.client = client or make_client(config)
        self.locks = ClusterBuildLock(self.client, lambda exc, action: _translate(exc, self.url, action),
                                      self.lock_conflict)
        self._neural_search: bool | None = None
        self._pipelines: set[str] = set()

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from opensearchpy import exceptions as osx

        try:
            return fn(*args, **kwargs)
        except (osx.TransportError, osx.ImproperlyConfigured) as exc:
            raise _translate(exc, self.url, action) from exc

    def ping(self) -> dict[str, Any]:
        return self._call("connecting", self.client.info)

    # --- building ---------------------------------------------------------------------------
    def _metas(self, pattern: str) -> dict[str, dict[str, Any]]:
        from opensearchpy import NotFoundError

        try:
            mappings = self.client.indices.get_mapping(index=pattern, allow_no_indices=True, expand_wildcards="open")
        except NotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001 - translated below
            raise _translate(exc, self.url, f"reading index metadata for {pattern}") from exc
        return {name: body.get("mappings", {}).get("_meta", {}) for name, body in mappings.items()}

    def build_metas(self, alias: str) -> dict[str, dict[str, Any]]:
        metas = self._metas(f"{index_name(alias)}-*")
        return {name: meta for name, meta in metas.items() if is_physical_of(name, alias)}

    def _alias_targets(self, alias: str) -> list[str]:
        from opensearchpy import NotFoundError

        try:
            found = self.client.indices.get_alias(name=index_name(alias))
        except NotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, self.url, f"reading alias {alias}") from exc
        return sorted(found)

    def alias_target(self, alias: str) -> str | None:
        targets = self._alias_targets(alias)
        return targets[-1] if targets else None

    def current_encoder(self, alias: str) -> EncoderDescription | None:
        index_name(alias)
        if self._call("checking the index name", self.client.indices.exists, index=alias) and not self._alias_targets(alias):
            raise BackendError(
                f"'{alias}' is a concrete index on {self.url}, not a ceindex alias; choose another --index name "
                "or delete that index"
            )
        targets = self._alias_targets(alias)
        if not targets:
            return None
        meta = self._metas(targets[0]).get(targets[0], {})
        if "encoder" not in meta:
            raise BackendError(f"index {targets[0]} behind alias '{alias}' has no ceindex metadata (_meta.encoder)")
        return EncoderDescription.from_dict(meta["encoder"])

    def build_lock(self, alias: str) -> AbstractContextManager[None]:
        return self.locks.hold(index_name(alias))

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

    def _actions(self, state: BuildState, docs: Sequence[Document], vectors: np.ndarray) -> Iterator[dict[str, Any]]:
        for doc, vector in zip(docs, vectors):
            yield {
                "_op_type": "index",
                "_index": state.physical,
                "_id": doc.id,
                "_source": {
                    "doc_id": doc.id,
                    "title": doc.title,
                    "text": doc.text,
                    "metadata": doc.metadata,
                    "vector": [float(x) for x in vector],
                },
            }

    def write(self, state: BuildState, docs: Sequence[Document], vectors: np.ndarray) -> list[Rejected]:
        from opensearchpy import helpers

        by_id = {doc.id: doc for doc in docs}
        rejects: list[Rejected] = []
        try:
            for ok, item in helpers.streaming_bulk(
                self.client,
                self._actions(state, docs, vectors),
                chunk_size=self.chunk_docs,
                max_chunk_bytes=self.chunk_bytes,
                raise_on_error=False,
                max_retries=self.config.max_retries,
                initial_backoff=1,
                max_backoff=30,
            ):
                if ok:
                    continue
                result = next(iter(item.values()))
                doc = by_id.get(str(result.get("_id")))
                error = result.get("error", {})
                reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
                rejects.append(
                    Rejected(
                        source="opensearch",
                        line=doc.line if doc else 0,
                        id=result.get("_id"),
                        reason=f"rejected by OpenSearch (HTTP {result.get('status')}): {reason}",
                    )
                )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, self.url, f"bulk-writing into {state.physical}; rerun the same command to resume") from exc
        return rejects

    def commit(self, state: BuildState) -> None:
        self.locks.check(state.alias)
        self._call(
            f"recording progress in {state.physical}",
            self.client.indices.put_mapping,
            index=state.physical,
            body={"_meta": state.to_meta()},
        )

    def seal(self, state: BuildState, settings: IndexSettings) -> int:
        self.locks.check(state.alias)
        physical = state.physical
        self._call(
            "restoring index settings",
            self.client.indices.put_settings,
            index=physical,
            body={"index": {"refresh_interval": None, "number_of_replicas": settings.replicas}},
        )
        self._call("refreshing", self.client.indices.refresh, index=physical)
        count = int(self._call("counting", self.client.count, index=physical)["count"])
        state.status = COMPLETE
        self.commit(state)
        return count

    def publish(self, state: BuildState) -> None:
        self.locks.check(state.alias, verify=True)
        physical = state.physical
        actions: list[dict[str, Any]] = [
            {"remove": {"index": old, "alias": state.alias}} for old in self._alias_targets(state.alias) if old != physical
        ]
        actions.append({"add": {"index": physical, "alias": state.alias}})
        self._call(f"moving alias {state.alias}", self.client.indices.update_aliases, body={"actions": actions})
        logger.info("alias %s -> %s", state.alias, physical)

    def prune(self, alias: str) -> list[str]:
        self.locks.check(alias, verify=True)
        current = set(self._alias_targets(alias))
        old = [name for name, meta in self.build_metas(alias).items() if meta.get("alias") == alias and name not in current]
        for name in sorted(old):
            self._call(f"deleting {name}", self.client.indices.delete, index=name)
        return sorted(old)

    # --- searching --------------------------------------------------------------------------
    def info(self, name: str) -> IndexInfo:
        from opensearchpy import NotFoundError

        searchable_name(name)
        try:
            mapping = self.client.indices.get_mapping(index=name)
        except NotFoundError:
            raise BackendError(
                f"no index or alias named '{name}' on {self.url}; build one with `ceindex build --index {name} ...`"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, self.url, f"reading index {name}") from exc
        physical, body = sorted(mapping.items())[-1]
        meta = body.get("mappings", {}).get("_meta", {})
        if "encoder" not in meta:
            raise BackendError(f"index '{name}' on {self.url} was not built by ceindex (no _meta.encoder)")
        count = int(self._call("counting", self.client.count, index=name)["count"])
        return IndexInfo(name=name, physical=physical, encoder=EncoderDescription.from_dict(meta["encoder"]), count=count,
                         fields=dict(meta.get("fields") or {}))

    def _msearch(self, name: str, bodies: list[dict[str, Any]], action: str) -> list[list[Hit]]:
        searchable_name(name)
        if not bodies:
            return []
        lines: list[dict[str, Any]] = []
        for body in bodies:
            lines.extend(({"index": name}, body))
        response = self._call(action, self.client.msearch, body=lines)
        results = []
        for item in response["responses"]:
            if "error" in item:
                error = item["error"]
                raise BackendError(f"OpenSearch {action} on '{name}' failed: {error.get('reason', error) if isinstance(error, dict) else error}")
            hits = item["hits"]["hits"]
            results.append([Hit(h["_id"], float(h["_score"]), rank) for rank, h in enumerate(hits, start=1)])
        return results

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
            self._neural_search = any(p.get("component") == "opensearch-neural-search" for p in plugins)
        return self._neural_search

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

    def fetch(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        searchable_name(name)
        if not ids:
            return {}
        response = self._call("fetching documents", self.client.mget, index=name, body={"ids": list(ids)}, _source_includes=SOURCE_FIELDS)
        out = {}
        for doc in response["docs"]:
            if doc.get("found"):
                src = doc["_source"]
                out[doc["_id"]] = Document(id=doc["_id"], title=src.get("title", ""), text=src.get("text", ""), metadata=src.get("metadata") or {})
        return out

    def close(self) -> None:
        self.client.close()
