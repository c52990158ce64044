"""Embedded on-disk backend: no server, one folder per index under ``CEINDEX_HOME``.

Why these parts:
- **SQLite** (stdlib) holds documents, vectors and the build state in one file, so a committed batch and the
  record of how far the build got are made durable in the same transaction: a crash loses at most the batch
  in flight, and upserts by id make the rerun idempotent.
- **bm25s** does BM25 with Lucene's formula and OpenSearch's parameters (k1 1.2, b 0.75) on an English
  snowball stemmer with English stop words, which ranks close to OpenSearch's ``english`` analyzer.
- **Exact inner product with numpy** over a memory-mapped float32 matrix for k-NN: exact (HNSW would only
  approximate it), no extra dependency, and fast enough for corpora up to a few million vectors on one machine.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ceindex.backends.base import (
    COMPLETE,
    Backend,
    BuildState,
    Hit,
    IndexInfo,
    IndexSettings,
    lock_holder,
    prunable,
    sliced_build_gone,
)
from ceindex.backends.columns import FieldColumns
from ceindex.backends.names import index_name, is_physical_of, looks_physical, searchable_name
from ceindex.data.corpus import Document, Rejected, body_text
from ceindex.data.files import atomic_write_text
from ceindex.models.base import EncoderDescription
from ceindex.errors import BackendError
from ceindex.filters import Filter, parse_field_types
from ceindex.text import BM25_B, BM25_K1, bm25_tokenize, import_bm25s

logger = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


SLICE_WAIT_S = 60.0


def _slice_key(number: int, count: int) -> str:
    return f"slice-{number}-of-{count}"


class _LoadedIndex:
    """A finished index opened for search (vectors memory-mapped, BM25 loaded once)."""

    def __init__(self, folder: Path) -> None:
        bm25s = import_bm25s()
        self.folder = folder
        self.ids: list[str] = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        self.vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        self.bm25 = bm25s.BM25.load(str(folder / "bm25")) if self.ids else None
        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.fields: dict[str, str] = dict(self.meta.get("fields") or {})
        self.columns = FieldColumns.load(folder, parse_field_types(self.fields))
        self._db = sqlite3.connect(folder / "docs.sqlite", check_same_thread=False)
        self._lock = threading.Lock()

    def fetch(self, ids: Sequence[str]) -> dict[str, Document]:
        if not ids:
            return {}
        out: dict[str, Document] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT id, title, text, metadata FROM docs WHERE id IN ({marks})", chunk)
                for doc_id, title, text, metadata in rows:
                    out[doc_id] = Document(id=doc_id, title=title, text=text, metadata=json.loads(metadata))
        return out

    def close(self) -> None:
        self._db.close()


class EmbeddedBackend(Backend):
    def __init__(self, home: str | Path) -> None:
        self.home = Path(home).expanduser()
        self.indexes_dir = self.home / "indexes"
        self.aliases_dir = self.home / "aliases"
        self._writers: dict[str, sqlite3.Connection] = {}
        self._writer_inodes: dict[str, int] = {}  # the docs.sqlite file each writer opened (a slice's gone check)
        self._loaded: dict[str, _LoadedIndex] = {}
        self._load_lock = threading.Lock()

    # --- names ------------------------------------------------------------------------------
    def _inside(self, parent: Path, child: str) -> Path:
        """``parent / child``, refusing anything that would resolve outside ``parent`` (defence in depth: the
        name rules already forbid separators and dot-names)."""
        path = parent / child
        if Path(os.path.abspath(path)).parent != Path(os.path.abspath(parent)):
            raise BackendError(f"index name {child!r} would leave the store {self.home}")
        return path

    def _folder(self, physical: str) -> Path:
        return self._inside(self.indexes_dir, searchable_name(physical))

    def _alias_file(self, alias: str) -> Path:
        return self._inside(self.aliases_dir, index_name(alias) + ".json")

    def alias_target(self, alias: str) -> str | None:
        path = self._alias_file(alias)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["physical"]

    def _resolve(self, name: str) -> str:
        name = searchable_name(name)
        target = None if looks_physical(name) else self.alias_target(name)
        if target is not None:
            return target
        if (self._folder(name) / "meta.json").is_file():
            return name
        known = sorted(p.stem for p in self.aliases_dir.glob("*.json")) if self.aliases_dir.is_dir() else []
        raise BackendError(
            f"no embedded index named '{name}' under {self.home} "
            f"(known: {', '.join(known) or 'none'}); build one with `ceindex build --index {name} ...`"
        )

    # --- building ---------------------------------------------------------------------------
    def _read_meta_table(self, db: sqlite3.Connection) -> dict[str, Any]:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        except sqlite3.OperationalError as exc:  # another process has just created the file, not yet its tables
            if "no such table" not in str(exc):
                raise
            return {}
        return json.loads(row[0]) if row else {}

    def build_metas(self, alias: str) -> dict[str, dict[str, Any]]:
        metas: dict[str, dict[str, Any]] = {}
        folders = self.indexes_dir.glob(f"{index_name(alias)}-*") if self.indexes_dir.is_dir() else []
        for folder in folders:
            if is_physical_of(folder.name, alias) and (folder / "docs.sqlite").is_file():
                db = sqlite3.connect(folder / "docs.sqlite")
                try:
                    metas[folder.name] = self._read_meta_table(db)
                finally:
                    db.close()
        return metas

    @contextmanager
    def build_lock(self, alias: str) -> Iterator[None]:
        """An exclusive ``flock`` on ``locks/ALIAS.lock``: the kernel drops it when the holder dies, so a killed
        build never blocks the next one; the file names the holder for the error message."""
        locks = self.home / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        path = self._inside(locks, index_name(alias) + ".lock")
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise self.lock_conflict(alias, handle.read().strip() or "another process") from None
            handle.seek(0)
            handle.truncate()
            handle.write(lock_holder())
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def current_encoder(self, alias: str) -> EncoderDescription | None:
        physical = self.alias_target(alias)
        if physical is None:
            return None
        meta = json.loads((self._folder(physical) / "meta.json").read_text(encoding="utf-8"))
        return EncoderDescription.from_dict(meta["encoder"])

    def _writer(self, state: BuildState) -> sqlite3.Connection:
        db = self._writers.get(state.physical)
        if db is None:
            folder = self._folder(state.physical)
            folder.mkdir(parents=True, exist_ok=True)
            # Written from the build's writer thread, one batch at a time (never concurrently).
            # N slice builders (``--slice I/N``) may write the same file from N processes: SQLite serialises them,
            # a writer waiting up to SLICE_WAIT_S for another's transaction
            db = sqlite3.connect(folder / "docs.sqlite", check_same_thread=False, timeout=SLICE_WAIT_S)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._writers[state.physical] = db
            self._writer_inodes[state.physical] = os.stat(folder / "docs.sqlite").st_ino
        return db

    def _slice_writer(self, state: BuildState) -> sqlite3.Connection:
        """The writer of the sliced build ``state``, refusing when its index is gone (deleted by hand, or by a
        prune before prune kept loading sliced builds): the slice must not record itself complete in a file no
        longer in the store, nor create the index afresh."""
        path = self._folder(state.physical) / "docs.sqlite"
        gone = state.physical not in self._writers and not path.is_file()
        if not gone:
            db = self._writer(state)
            try:
                gone = os.stat(path).st_ino != self._writer_inodes[state.physical]
            except FileNotFoundError:
                gone = True
            gone = gone or db.execute("SELECT 1 FROM meta WHERE key = 'state'").fetchone() is None
        if gone:
            raise BackendError(sliced_build_gone(state))
        return db

    def create(self, state: BuildState, settings: IndexSettings) -> None:
        if self._folder(state.physical).exists():
            raise BackendError(f"embedded index folder {self._folder(state.physical)} already exists")
        self.commit(state)

    def write(self, state: BuildState, docs: Sequence[Document], vectors: np.ndarray) -> list[Rejected]:
        db = self._slice_writer(state) if state.slices else self._writer(state)
        rows = [
            (d.id, d.title, d.text, json.dumps(d.metadata, ensure_ascii=False, default=str), np.asarray(v, "<f4").tobytes())
            for d, v in zip(docs, vectors)
        ]
        db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?)", rows)
        return []

    def commit(self, state: BuildState) -> None:
        db = self._writer(state)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('state', ?)", (json.dumps(state.to_meta()),))
        db.commit()

    def read_slices(self, state: BuildState) -> dict[int, dict[str, Any]]:
        rows = self._slice_writer(state).execute("SELECT key, value FROM meta WHERE key LIKE 'slice-%'")
        records = {key: json.loads(value) for key, value in rows}
        return {n: records[_slice_key(n, state.slices)] for n in range(1, state.slices + 1)
                if _slice_key(n, state.slices) in records}

    def commit_slice(self, state: BuildState, number: int, record: dict[str, Any]) -> None:
        db = self._slice_writer(state)  # the slice's documents and its progress become durable together
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_slice_key(number, state.slices), json.dumps(record)))
        db.commit()

    def seal(self, state: BuildState, settings: IndexSettings) -> int:
        bm25s = import_bm25s()
        db = self._writer(state)
        folder = self._folder(state.physical)
        ids: list[str] = []
        texts: list[str] = []
        dims = state.encoder.dims
        count = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        matrix = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(count, dims))
        types = parse_field_types(state.fields)
        metadatas: list[tuple[int, dict[str, Any]]] = []
        rows = db.execute("SELECT id, title, text, metadata, vector FROM docs ORDER BY rowid")
        for row, (doc_id, title, text, metadata, blob) in enumerate(rows):
            ids.append(doc_id)
            texts.append(body_text(title, text))
            matrix[row] = np.frombuffer(blob, dtype="<f4")
            if types:
                metadatas.append((row, {k: v for k, v in json.loads(metadata).items() if k in types}))
        matrix.flush()
        del matrix
        if types:
            FieldColumns.build(len(ids), types, metadatas).save(folder)
        del metadatas
        if ids:
            retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
            retriever.index(bm25_tokenize(texts), show_progress=False)
            retriever.save(str(folder / "bm25"))
        del texts
        (folder / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
        state.status = COMPLETE
        self.commit(state)
        db.close()
        self._writers.pop(state.physical, None)
        self._writer_inodes.pop(state.physical, None)
        meta = state.to_meta() | {"count": len(ids)}
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))
        return len(ids)

    def publish(self, state: BuildState) -> None:
        self.aliases_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._alias_file(state.alias), json.dumps({"physical": state.physical}))
        logger.info("alias %s -> %s", state.alias, state.physical)

    def prune(self, alias: str) -> list[str]:
        current = {self.alias_target(alias)} - {None}
        removed = []
        for physical, meta in sorted(self.build_metas(alias).items()):
            if physical not in self._writers and prunable(physical, meta, alias, current):
                shutil.rmtree(self._folder(physical))
                removed.append(physical)
        return removed

    # --- searching --------------------------------------------------------------------------
    def _open(self, name: str) -> _LoadedIndex:
        physical = self._resolve(name)
        with self._load_lock:
            loaded = self._loaded.get(physical)
            if loaded is None:
                loaded = _LoadedIndex(self._folder(physical))
                self._loaded[physical] = loaded
        return loaded

    def info(self, name: str) -> IndexInfo:
        loaded = self._open(name)
        return IndexInfo(
            name=name,
            physical=loaded.folder.name,
            encoder=EncoderDescription.from_dict(loaded.meta["encoder"]),
            count=len(loaded.ids),
            fields=dict(loaded.fields),
        )

    def _mask(self, loaded: _LoadedIndex, filter: Filter | None) -> np.ndarray | None:
        """The rows ``filter`` keeps (None: all), computed exactly from the field columns."""
        return None if filter is None else loaded.columns.mask(filter)

    def bm25(self, name: str, queries: Sequence[str], n: int, filter: Filter | None = None) -> list[list[Hit]]:
        loaded = self._open(name)
        if loaded.bm25 is None or not queries:
            return [[] for _ in queries]
        mask = self._mask(loaded, filter)
        if mask is not None and not mask.any():
            return [[] for _ in queries]
        k = min(n, len(loaded.ids))
        # A filter is a weight mask inside the scoring: non-matching documents score 0 and are dropped below, so
        # the top-k is the exact top-k of the matching documents.
        weights = None if mask is None else mask.astype(np.float32)
        indices, scores = loaded.bm25.retrieve(bm25_tokenize(queries), k=k, show_progress=False, n_threads=0,
                                               weight_mask=weights)
        return [
            [Hit(loaded.ids[int(i)], float(s), rank) for rank, (i, s) in enumerate(zip(row_i, row_s), start=1) if s > 0]
            for row_i, row_s in zip(indices, scores)
        ]

    def knn(
        self, name: str, vectors: np.ndarray, n: int, ef_search: int = 100, filter: Filter | None = None
    ) -> list[list[Hit]]:
        loaded = self._open(name)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != loaded.vectors.shape[1]:
            raise BackendError(
                f"query vectors have {vectors.shape[1]} dimensions, index '{name}' has {loaded.vectors.shape[1]}"
            )
        mask = self._mask(loaded, filter)
        rows = None if mask is None else np.flatnonzero(mask)  # exact search over the matching rows only
        if not loaded.ids or (rows is not None and not len(rows)):
            return [[] for _ in range(len(vectors))]
        matrix = np.asarray(loaded.vectors) if rows is None else np.asarray(loaded.vectors[rows])
        scores = vectors @ matrix.T
        k = min(n, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, candidates in enumerate(top):
            order = candidates[np.lexsort((candidates, -scores[row, candidates]))]  # ties: corpus order
            doc_rows = order if rows is None else rows[order]
            results.append([Hit(loaded.ids[int(d)], float(scores[row, i]), rank)
                            for rank, (i, d) in enumerate(zip(order, doc_rows), start=1)])
        return results

    def fetch(self, name: str, ids: Sequence[str]) -> dict[str, Document]:
        return self._open(name).fetch(ids)

    def close(self) -> None:
        for db in self._writers.values():
            db.close()
        self._writers.clear()
        self._writer_inodes.clear()
        for loaded in self._loaded.values():
            loaded.close()
        self._loaded.clear()
