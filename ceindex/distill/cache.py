"""Teacher outputs kept on disk, one store per (teacher weights sha256, what is computed, max length).

Entries are keyed by the sha256 of their input texts, so a run computes only what no earlier run (another arm of a
benchmark, a rerun, a resumed run, a different mix of sources) has computed yet. Stores are replaced atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ceindex.data.files import atomic_write_text

log = logging.getLogger(__name__)


def text_key(*texts: str) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


CHUNK = 2048  # entries computed between two writes: an interrupted run keeps what it computed


class ScoreStore:
    """Float per key (the cross-encoder's score of a (query, document) pair), a JSON file."""

    def __init__(self, cache_dir: Path | None, name: str) -> None:
        self.path = Path(cache_dir) / f"{name}.json" if cache_dir else None

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray],
                       chunk: int = CHUNK) -> np.ndarray:
        """Values for ``keys``; ``compute(indices)`` is called (in chunks, each stored) for the ones not stored yet."""
        stored = self._read()
        missing = [i for i, k in enumerate(keys) if k not in stored]
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            stored.update({keys[i]: float(v) for i, v in zip(part, compute(part))})
            self._write(stored)
        log.info("teacher scores: %d of %d read from the cache", len(keys) - len(missing), len(keys))
        return np.array([stored[k] for k in keys], dtype=np.float32)

    def _read(self) -> dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            return {str(k): float(v) for k, v in json.loads(self.path.read_text(encoding="utf-8")).items()}
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring the unreadable teacher cache %s", self.path)
            return {}

    def _write(self, stored: dict[str, float]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(stored))


class VectorStore:
    """A vector per key (a dual encoder's embedding of a text): ``NAME.npy`` rows + ``NAME.keys.json``."""

    def __init__(self, cache_dir: Path | None, name: str) -> None:
        self.matrix = Path(cache_dir) / f"{name}.npy" if cache_dir else None
        self.index = Path(cache_dir) / f"{name}.keys.json" if cache_dir else None

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray],
                       chunk: int = CHUNK) -> np.ndarray:
        stored_keys, matrix = self._read()
        row_of = {k: r for r, k in enumerate(stored_keys)}
        first_of: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in row_of:
                first_of.setdefault(k, i)
        missing = list(first_of.values())
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            new = np.asarray(compute(part), dtype=np.float32)
            matrix = new if matrix is None else np.concatenate([matrix, new])
            for i in part:
                row_of[keys[i]] = len(stored_keys)
                stored_keys.append(keys[i])
            self._write(stored_keys, matrix)
        log.info("teacher vectors: %d of %d read from the cache", len(keys) - len(missing), len(keys))
        assert matrix is not None
        return matrix[[row_of[k] for k in keys]] if keys else np.zeros((0, 0), np.float32)

    def _read(self) -> tuple[list[str], np.ndarray | None]:
        if self.matrix is None or self.index is None or not (self.matrix.is_file() and self.index.is_file()):
            return [], None
        try:
            keys = json.loads(self.index.read_text(encoding="utf-8"))
            matrix = np.load(self.matrix)
        except (OSError, ValueError):
            log.warning("ignoring the unreadable teacher cache %s", self.matrix)
            return [], None
        if len(keys) != matrix.shape[0]:
            log.warning("ignoring the inconsistent teacher cache %s (%d keys, %d rows)", self.matrix, len(keys), matrix.shape[0])
            return [], None
        return list(keys), matrix

    def _write(self, keys: list[str], matrix: np.ndarray) -> None:
        if self.matrix is None or self.index is None:
            return
        self.matrix.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.matrix.with_name(self.matrix.name + ".tmp.npy")
        np.save(tmp, matrix)
        tmp.replace(self.matrix)  # rows first: a crash between the two leaves keys < rows, caught as inconsistent
        atomic_write_text(self.index, json.dumps(keys))
