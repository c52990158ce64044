"""The one backend interface: an OpenSearch and an embedded implementation sit behind it.

A *build* writes into a fresh physical index (``NAME-<timestamp>``) and then points the name ``NAME`` at it,
so readers never see a half-built index. Build progress (how many corpus records are committed) is kept with
the physical index, which is what makes a rerun of the same build resume instead of starting over.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ceindex.data.corpus import Document, Rejected
from ceindex.errors import BackendError
from ceindex.filters import Filter
from ceindex.models.base import EncoderDescription

logger = logging.getLogger(__name__)

MAPPING_VERSION = 1
# A build is "building" while batches are written and "complete" once sealed (settings restored, counted); it
# serves under its alias only after publish(), which the build does only when the result is good.
BUILDING, COMPLETE = "building", "complete"
FAILED = "failed"  # sealed, but its count check failed: never resumed (a resume would seal the same result again)
MAX_REFUSED_KEPT = 1000  # refused rows whose details a build keeps (their count is always exact)


@dataclass
class BuildState:
    """What a physical index records about the build that fills it."""

    physical: str  # the physical index name, e.g. scifact-20261127t183000
    alias: str
    encoder: EncoderDescription
    corpus_fingerprint: str
    committed: int = 0  # corpus records (good or bad) fully handled and durable
    status: str = BUILDING
    # rows the store itself refused in committed batches (a resume skips those batches, so they are kept here)
    refused: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_REFUSED_KEPT, as Rejected.to_dict()
    refused_total: int = 0
    fields: dict[str, str] = field(default_factory=dict)  # typed metadata fields, {"lang": "keyword", ...}
    slices: int = 0  # N for a build filled by N slice builders (``ceindex build --slice I/N``), else 0
    # the index settings a sliced build was created with ({"shards": 1, "knn_m": 16, "knn_ef_construction": 128}):
    # every slice must give the same; empty for an unsliced build or a sliced one recorded before they were kept
    index_settings: dict[str, int] = field(default_factory=dict)

    def record_refused(self, rows: Sequence[Rejected]) -> None:
        self.refused_total += len(rows)
        room = max(0, MAX_REFUSED_KEPT - len(self.refused))
        self.refused.extend(row.to_dict() for row in rows[:room])

    def to_meta(self) -> dict[str, Any]:
        build = {"status": self.status, "committed": self.committed, "corpus": self.corpus_fingerprint,
                 "refused": self.refused, "refused_total": self.refused_total}
        if self.slices:
            build["slices"] = self.slices
        if self.index_settings:
            build["index_settings"] = dict(self.index_settings)
        return {
            "ceindex_mapping_version": MAPPING_VERSION,
            "alias": self.alias,
            "encoder": self.encoder.to_dict(),
            "fields": dict(self.fields),
            "build": build,
        }

    @classmethod
    def from_meta(cls, physical: str, meta: dict[str, Any]) -> "BuildState":
        build = meta.get("build", {})
        return cls(
            physical=physical,
            alias=meta.get("alias", ""),
            encoder=EncoderDescription.from_dict(meta["encoder"]),
            corpus_fingerprint=build.get("corpus", ""),
            committed=int(build.get("committed", 0)),
            status=build.get("status", COMPLETE),
            refused=list(build.get("refused", [])),
            refused_total=int(build.get("refused_total", 0)),
            fields=dict(meta.get("fields") or {}),
            slices=int(build.get("slices", 0)),
            index_settings={k: int(v) for k, v in (build.get("index_settings") or {}).items()},
        )

    @property
    def slices_loading(self) -> bool:
        """A sliced build whose slices may still be writing into it: not sealed by ``--finalize``, not failed.
        ``prune`` keeps it (the slices hold only their own slice locks, not the alias's build lock)."""
        return self.slices > 0 and self.status == BUILDING


@dataclass
class IndexSettings:
    """Index-creation options taken from the build configuration."""

    knn_m: int = 16
    knn_ef_construction: int = 128
    shards: int = 1
    replicas: int = 0

    def sliced_record(self) -> dict[str, int]:
        """What every slice of one sliced build must agree on (replicas are set once, by ``--finalize``)."""
        return {"shards": self.shards, "knn_m": self.knn_m, "knn_ef_construction": self.knn_ef_construction}


@dataclass
class Hit:
    id: str
    score: float
    rank: int  # 1-based


@dataclass
class IndexInfo:
    name: str  # what the user asked for (an alias)
    physical: str
    encoder: EncoderDescription
    count: int
    extra: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # the typed metadata fields filters may use


def lock_holder() -> str:
    """How a build lock names its holder (this process) in a second builder's error message."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"


def prunable(physical: str, meta: dict[str, Any], alias: str, current: set[str]) -> bool:
    """Whether ``prune(alias)`` may delete ``physical``: a build of exactly ``alias`` the alias does not point at,
    and not a sliced build whose slices may still be writing (it is kept, with a log line, until ``--finalize``
    seals it or its count check fails; an abandoned one is deleted by hand)."""
    if physical in current or meta.get("alias") != alias:
        return False
    if "encoder" in meta and BuildState.from_meta(physical, meta).slices_loading:
        logger.warning("prune keeps %s: a sliced build of '%s' not yet finalized (its slices may still be loading); "
                       "delete it by hand if it was abandoned", physical, alias)
        return False
    return True


def sliced_build_gone(state: BuildState) -> str:
    """The error of a slice whose sliced build was deleted under it."""
    return (f"the sliced build {state.physical} of '{state.alias}' no longer exists: it was deleted while this slice "
            "was loading; nothing more of this slice was written or recorded. The other slices' rows went with it: "
            "rerun every slice's command (they start a new sliced build), then --finalize")


class BuildLockBusy(BackendError):
    """Another live builder holds the build lock asked for."""


class Backend(ABC):
    """Where documents and vectors live; used by ``ceindex build`` and the search pipeline."""

    # --- building ---------------------------------------------------------------------------
    @abstractmethod
    def build_metas(self, alias: str) -> dict[str, dict[str, Any]]:
        """``{physical index: recorded metadata}`` of every physical index built for ``alias``."""

    def find_resumable(self, alias: str, encoder: EncoderDescription, corpus_fingerprint: str) -> BuildState | None:
        """The newest unpublished build of ``alias`` with the same corpus and EXACTLY the same encoder settings
        (incl. max length and dtype, so a resume never mixes vectors): unfinished, or sealed but never published
        (a crash before the alias moved, or a publish held back for rejects)."""
        published = self.alias_target(alias)
        for physical, meta in sorted(self.build_metas(alias).items(), reverse=True):
            if meta.get("alias") != alias or "encoder" not in meta or physical == published:
                continue
            state = BuildState.from_meta(physical, meta)
            if state.corpus_fingerprint != corpus_fingerprint or state.status == FAILED or state.slices:
                continue
            diffs = state.encoder.build_differences(encoder)
            if diffs:
                detail = "; ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diffs.items())
                logger.warning("not resuming %s: it was built with other encoder settings (%s); starting a new build "
                               "(--prune deletes the old one after a successful build)", physical, detail)
                continue
            return state
        return None

    @abstractmethod
    def alias_target(self, alias: str) -> str | None:
        """The physical index ``alias`` points at, or None."""

    @staticmethod
    def lock_conflict(alias: str, holder: str) -> BackendError:
        return BuildLockBusy(
            f"index '{alias}' is being built right now by {holder}; wait for that build to finish (or stop it) — "
            "two builders of one index would overwrite each other"
        )

    @abstractmethod
    def build_lock(self, alias: str) -> AbstractContextManager[None]:
        """Held for the whole build of ``alias``: a second builder of the same alias gets a BackendError naming
        the holder, and a builder that died (killed process, lost heartbeat) does not block the next one."""

    @abstractmethod
    def current_encoder(self, alias: str) -> EncoderDescription | None:
        """The encoder recorded by the index ``alias`` points at, or None when there is none."""

    @abstractmethod
    def create(self, state: BuildState, settings: IndexSettings) -> None:
        """Create the physical index for a new build, tuned for loading."""

    @abstractmethod
    def write(self, state: BuildState, docs: Sequence[Document], vectors: np.ndarray) -> list[Rejected]:
        """Upsert documents by id; return per-document failures (the rest are written)."""

    @abstractmethod
    def commit(self, state: BuildState) -> None:
        """Make everything written so far durable and record ``state.committed``."""

    @abstractmethod
    def seal(self, state: BuildState, settings: IndexSettings) -> int:
        """Restore serving settings, make everything searchable, mark the build complete; return the doc count.
        Idempotent, and the alias is NOT moved."""

    @abstractmethod
    def publish(self, state: BuildState) -> None:
        """Point the alias at the sealed build (atomically replacing what it pointed at)."""

    @abstractmethod
    def prune(self, alias: str) -> list[str]:
        """Delete physical indexes recorded as builds of exactly ``alias`` (by name and metadata) that the alias no
        longer points at; never another alias's indexes, never a sliced build still loading (see
        :func:`prunable`). Return their names."""

    # --- sliced builds (``ceindex build --slice I/N``: N builders fill one physical index) ----------
    # Each slice records its own progress apart from the index's build state (the slices commit at the same time,
    # so one shared record would lose updates); the lock ``slice_lock_name(alias, I, N)`` guards it.
    def read_slices(self, state: BuildState) -> dict[int, dict[str, Any]]:
        """``{slice number: its last committed record}`` of the sliced build ``state`` (never-started ones absent)."""
        raise BackendError(f"the {type(self).__name__} store cannot build in slices; build without --slice")

    def commit_slice(self, state: BuildState, number: int, record: dict[str, Any]) -> None:
        """Make everything written so far durable and record slice ``number``'s progress ``record``."""
        raise BackendError(f"the {type(self).__name__} store cannot build in slices; build without --slice")

    # --- searching --------------------------------------------------------------------------
    @abstractmethod
    def info(self, name: str) -> IndexInfo:
        """Describe the index ``name`` (alias or physical); raise BackendError when missing."""

    # ``filter`` (a parsed ceindex.filters.Filter, checked against ``info().fields``) restricts every recall to
    # the matching documents INSIDE the search (never after it), so a selective filter still returns ``n`` hits.
    @abstractmethod
    def bm25(self, name: str, queries: Sequence[str], n: int, filter: Filter | None = None) -> list[list[Hit]]:
        """BM25 top-``n`` per query among the documents ``filter`` keeps."""

    @abstractmethod
    def knn(
        self, name: str, vectors: np.ndarray, n: int, ef_search: int = 100, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Nearest ``n`` documents per query vector (cosine on unit vectors) among those ``filter`` keeps."""

    @abstractmethod
    def fetch(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        """Stored documents by id (missing ids are absent from the result)."""

    def server_fusion(self, method: str, weights: Sequence[float], rrf_k: int) -> bool:
        """Whether ``hybrid`` can fuse with ``method`` on the server (OpenSearch with neural-search)."""
        return False

    def server_fusion_caveat(self, name: str, method: str) -> str | None:
        """Why fusing ``method`` on the server would not rank index ``name`` as ceindex's own fusion does (None: it
        would); ``--server-fusion auto`` then fuses in ceindex."""
        return None

    def hybrid(
        self, name: str, queries: Sequence[str], vectors: np.ndarray, n: int, method: str,
        weights: Sequence[float], rrf_k: int, ef_search: int = 100, filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """BM25 + k-NN recall fused on the server (``filter`` applied inside both); only where ``server_fusion``
        says so."""
        raise NotImplementedError(f"{type(self).__name__} has no server-side fusion")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""
