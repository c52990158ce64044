"""What the OpenSearch and the Elasticsearch backends share: both engines speak the same index, alias, bulk,
msearch and mget REST API, so a build (``NAME-<timestamp>`` + alias swap, ``_meta`` progress and encoder lock,
refresh/replicas toggled, count check, build lock) and fetching are written once here, against either client.

A subclass gives its client, its error classes (:class:`ClientErrors`), its bulk helper, its index template
(``create``) and its recall queries (``bm25``, ``knn``).
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ceindex.backends.base import (
    COMPLETE,
    Backend,
    BuildState,
    Hit,
    IndexInfo,
    IndexSettings,
    prunable,
    sliced_build_gone,
)
from ceindex.backends.cluster_lock import ClientErrors, ClusterBuildLock
from ceindex.backends.names import LOCKS_INDEX, index_name, is_physical_of, searchable_name, slice_lock_name
from ceindex.data.corpus import Document, Rejected
from ceindex.errors import BackendError
from ceindex.models.base import EncoderDescription
from ceindex.redact import redact

logger = logging.getLogger(__name__)

SOURCE_FIELDS = ["doc_id", "title", "text", "metadata"]
RETRY_STATUSES = (429, 502, 503, 504)
CREDENTIALS_HINT = "set CEINDEX_OPENSEARCH_USER and CEINDEX_OPENSEARCH_PASSWORD"
T = TypeVar("T")


def with_backoff(call: Callable[[], T], retries: int, retryable: Callable[[Exception], bool], describe: str) -> T:
    """``call()``, retried up to ``retries`` times on a ``retryable`` error after 0.5 s, 1 s, 2 s, ... (at most
    10 s), one log line per retry (the clients' own retries come at once: a dead node saw 5 within a millisecond)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - re-raised unless retryable
            if not retryable(exc) or attempt == retries:
                raise
            delay = min(10.0, 0.5 * 2**attempt)
            logger.warning("%s failed (%s); retry %d of %d in %.1f s", describe, type(exc).__name__, attempt + 1,
                           retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def translate_error(engine: str, errors: ClientErrors, exc: Exception, url: str, action: str) -> BackendError:
    """One clear BackendError (no credentials, no traceback) for a client error while doing ``action``."""
    url = redact(url)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, errors.unauthorized):
        return BackendError(f"{engine} at {url} refused the credentials while {action} (HTTP 401); {CREDENTIALS_HINT}")
    if isinstance(exc, errors.forbidden):
        return BackendError(redact(f"{engine} at {url} denied permission while {action} (HTTP 403): {_reason(exc)}"))
    if isinstance(exc, errors.timeout):
        return BackendError(f"{engine} at {url} timed out while {action}; raise --timeout or check the cluster")
    if isinstance(exc, errors.tls) and _plain_http_answer(exc):
        return BackendError(
            f"{url} does not speak TLS (the server answered in plain HTTP) while {action}; "
            f"use {url.replace('https://', 'http://', 1)} instead"
        )
    if isinstance(exc, errors.tls):
        return BackendError(redact(
            f"TLS failure talking to {url} while {action}: {_reason(exc)}; "
            "pass the cluster's CA bundle with --ca-certs (or --no-verify-certs for a throwaway test cluster)"
        ))
    if isinstance(exc, errors.connection):
        return BackendError(f"cannot reach {engine} at {url} while {action}: is the cluster running?")
    if isinstance(status, int):
        return BackendError(redact(f"{engine} at {url} failed while {action}: HTTP {status} {_reason(exc)}"))
    return BackendError(redact(f"{engine} at {url} failed while {action}: {exc}"))


def _reason(exc: Exception) -> str:
    """The server's own reason (``error.reason``), else what the client says."""
    info = getattr(exc, "info", None) or getattr(exc, "body", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        error = info["error"]
        root = (error.get("root_cause") or [{}])[0]
        return str(root.get("reason") or error.get("reason") or error)
    if isinstance(info, Exception) or info is None:
        return str(getattr(exc, "error", None) or exc)
    return f"{getattr(exc, 'error', '')}: {info}"


def _plain_http_answer(exc: Exception) -> bool:
    """Whether a TLS handshake failed because the port speaks plain HTTP (OpenSSL: wrong version number)."""
    text = f"{exc} {getattr(exc, 'info', '')}".lower()
    return "wrong version number" in text or "record layer failure" in text or "http request" in text


def _cluster_side(result: dict[str, Any]) -> bool:
    """Whether a failed bulk item failed for the cluster's sake (HTTP 429 or 5xx: e.g. 503 when its shard has no
    live primary), not the document's (4xx: a mapping error is a reject of that row)."""
    status = result.get("status")
    return isinstance(status, int) and (status == 429 or status >= 500)


def _item_reason(result: dict[str, Any]) -> str:
    error = result.get("error", {})
    return error.get("reason", str(error)) if isinstance(error, dict) else str(error)


def body_of(response: Any) -> Any:
    """The JSON body of a client response (elasticsearch-py wraps it; opensearch-py returns it)."""
    return getattr(response, "body", response)


class ClusterBackend(Backend):
    """A Backend on an OpenSearch-or-Elasticsearch cluster; see the module docstring for what subclasses add."""

    ENGINE = "cluster"
    MGET_SOURCE_PARAM = "_source_includes"  # mget's source-filter keyword in the client

    def __init__(self, client: Any, url: str, errors: ClientErrors, *, max_retries: int, chunk_docs: int,
                 chunk_bytes: int) -> None:
        self.client = client
        self.url = redact(url)  # for messages: never the credentials
        self.errors = errors
        self.max_retries = max_retries
        self.chunk_docs = chunk_docs
        self.chunk_bytes = chunk_bytes
        self.locks = ClusterBuildLock(client, self._translate, self.lock_conflict, errors)

    # --- engine hooks -----------------------------------------------------------------------
    def _translate(self, exc: Exception, action: str) -> BackendError:
        return translate_error(self.ENGINE, self.errors, exc, self.url, action)

    def _streaming_bulk(self) -> Callable[..., Iterator[tuple[bool, dict[str, Any]]]]:
        raise NotImplementedError

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return body_of(fn(*args, **kwargs))
        except self.errors.api as exc:
            raise self._translate(exc, action) from exc

    def ping(self) -> dict[str, Any]:
        return self._call("connecting", self.client.info)

    # --- building ---------------------------------------------------------------------------
    def _metas(self, pattern: str) -> dict[str, dict[str, Any]]:
        try:
            mappings = body_of(self.client.indices.get_mapping(index=pattern, allow_no_indices=True,
                                                               expand_wildcards="open"))
        except self.errors.not_found:
            return {}
        except Exception as exc:  # noqa: BLE001 - translated below
            raise self._translate(exc, f"reading index metadata for {pattern}") from exc
        return {name: body.get("mappings", {}).get("_meta", {}) for name, body in mappings.items()}

    def build_metas(self, alias: str) -> dict[str, dict[str, Any]]:
        metas = self._metas(f"{index_name(alias)}-*")
        return {name: meta for name, meta in metas.items() if is_physical_of(name, alias)}

    def _alias_targets(self, alias: str) -> list[str]:
        try:
            found = body_of(self.client.indices.get_alias(name=index_name(alias)))
        except self.errors.not_found:
            return []
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, f"reading alias {alias}") from exc
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

    def _check_sliced_build(self, state: BuildState) -> None:
        """A slice writes only into its sliced build while it exists: a bulk write into a deleted index would
        create it afresh (without the build's mapping and metadata), and a progress record would outlive it. An
        index re-created that way (a delete between this check and the bulk) has no ``_meta``: the commit refuses."""
        meta = self._metas(state.physical).get(state.physical) or {}  # {}: gone, or re-created without _meta
        if (meta.get("build") or {}).get("corpus") != state.corpus_fingerprint:
            raise BackendError(sliced_build_gone(state))

    def write(self, state: BuildState, docs: Sequence[Document], vectors: np.ndarray) -> list[Rejected]:
        if state.slices and docs:
            self._check_sliced_build(state)
        by_id = {doc.id: doc for doc in docs}
        rejects: list[Rejected] = []
        unwritten: dict[str, Any] | None = None
        try:
            for ok, item in self._streaming_bulk()(
                self.client,
                self._actions(state, docs, vectors),
                chunk_size=self.chunk_docs,
                max_chunk_bytes=self.chunk_bytes,
                raise_on_error=False,
                max_retries=self.max_retries,
                initial_backoff=1,
                max_backoff=30,
            ):
                if not ok:
                    result = next(iter(item.values()))
                    if _cluster_side(result):  # stop at once: later chunks would wait out the same timeout
                        unwritten = result
                        break
                    rejects.append(self._rejected(result, by_id))
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, f"bulk-writing into {state.physical}; rerun the same command to resume") from exc
        if unwritten is not None:
            raise self._unwritten(state, unwritten)
        return rejects

    def _unwritten(self, state: BuildState, result: dict[str, Any]) -> BackendError:
        """A batch the cluster could not take (a shard without a live copy, overload): the build fails, keeps its
        progress at the last full batch, and no document is blamed for it."""
        head = (f"{self.ENGINE} at {self.url} could not write document {result.get('_id')!r} of this batch into "
                f"{state.physical} (HTTP {result.get('status')}: {_item_reason(result)})")
        if result.get("status") == 429:  # still refused after the bulk helper's retries: overloaded, not broken
            return BackendError(
                f"{head}: the cluster is overloaded (it still refused the write after {self.max_retries} retries). "
                "Send it less at a time (lower --chunk-docs) or wait longer (raise --max-retries), and rerun the "
                "same command to resume"
            )
        return BackendError(
            f"{head}: a node or shard is unavailable. "
            "Bring the node back until GET _cluster/health has no unassigned primary shards (yellow or green) and "
            "rerun the same command to resume"
        )

    def _rejected(self, result: dict[str, Any], by_id: dict[str, Document]) -> Rejected:
        doc = by_id.get(str(result.get("_id")))
        return Rejected(source=self.ENGINE.lower(), line=doc.line if doc else 0, id=result.get("_id"),
                        reason=f"rejected by {self.ENGINE} (HTTP {result.get('status')}): {_item_reason(result)}")

    def commit(self, state: BuildState) -> None:
        self.locks.check(state.alias)
        self._call(
            f"recording progress in {state.physical}",
            self.client.indices.put_mapping,
            index=state.physical,
            body={"_meta": state.to_meta()},
        )

    # --- sliced builds: each slice's progress is a document in the build-lock index ----------
    @staticmethod
    def _slice_id(physical: str, number: int, count: int) -> str:
        return f"progress:{physical}:{number}/{count}"

    def read_slices(self, state: BuildState) -> dict[int, dict[str, Any]]:
        ids = [self._slice_id(state.physical, n, state.slices) for n in range(1, state.slices + 1)]
        try:
            found = body_of(self.client.mget(index=LOCKS_INDEX, body={"ids": ids}))
        except self.errors.not_found:  # no build lock was ever taken on this cluster
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, f"reading the slice progress of {state.physical}") from exc
        return {n: doc["_source"] for n, doc in enumerate(found["docs"], start=1) if doc.get("found")}

    def commit_slice(self, state: BuildState, number: int, record: dict[str, Any]) -> None:
        self.locks.check(slice_lock_name(state.alias, number, state.slices))
        self._check_sliced_build(state)
        self._call(f"recording the progress of slice {number}/{state.slices} of {state.physical}", self.client.index,
                   index=LOCKS_INDEX, id=self._slice_id(state.physical, number, state.slices), body=record)

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
        old = [name for name, meta in self.build_metas(alias).items() if prunable(name, meta, alias, current)]
        for name in sorted(old):
            self._call(f"deleting {name}", self.client.indices.delete, index=name)
        return sorted(old)

    # --- searching --------------------------------------------------------------------------
    def _index_meta(self, name: str) -> tuple[str, dict[str, Any], int]:
        """(physical index, its ``_meta``, document count) of the index or alias ``name``."""
        searchable_name(name)
        try:
            mapping = body_of(self.client.indices.get_mapping(index=name))
        except self.errors.not_found:
            raise BackendError(
                f"no index or alias named '{name}' on {self.url}; build one with `ceindex build --index {name} ...`"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, f"reading index {name}") from exc
        physical, body = sorted(mapping.items())[-1]
        meta = body.get("mappings", {}).get("_meta", {})
        if "encoder" not in meta:
            raise BackendError(f"index '{name}' on {self.url} was not built by ceindex (no _meta.encoder)")
        count = int(self._call("counting", self.client.count, index=name)["count"])
        return physical, meta, count

    def info(self, name: str) -> IndexInfo:
        physical, meta, count = self._index_meta(name)
        return IndexInfo(name=name, physical=physical, encoder=EncoderDescription.from_dict(meta["encoder"]),
                         count=count, fields=dict(meta.get("fields") or {}))

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
                raise BackendError(f"{self.ENGINE} {action} on '{name}' failed: "
                                   f"{error.get('reason', error) if isinstance(error, dict) else error}")
            hits = item["hits"]["hits"]
            results.append([Hit(h["_id"], float(h["_score"]), rank) for rank, h in enumerate(hits, start=1)])
        return results

    def fetch(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        searchable_name(name)
        if not ids:
            return {}
        response = self._call("fetching documents", self.client.mget, index=name, body={"ids": list(ids)},
                              **{self.MGET_SOURCE_PARAM: SOURCE_FIELDS})
        out = {}
        for doc in response["docs"]:
            if doc.get("found"):
                src = doc["_source"]
                out[doc["_id"]] = Document(id=doc["_id"], title=src.get("title", ""), text=src.get("text", ""),
                                           metadata=src.get("metadata") or {})
        return out

    def close(self) -> None:
        self.client.close()
