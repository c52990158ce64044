"""A dual encoder as teacher: its unit vectors of every training text, which the student learns to match.

Computed once per (teacher weights sha256, max length, texts) and cached on disk as ``.npy``, so reruns, resumes
and the arms of a benchmark (CE-init, control, random init on the same data) pay for the teacher once.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)


def teacher_embeddings(
    model: str,
    texts: Mapping[str, str],
    max_length: int,
    *,
    cache_dir: Path | None = None,
    model_sha256: str = "",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Text id -> the teacher's L2-normalised float32 vector."""
    ids = sorted(texts)
    values = [texts[i] for i in ids]
    cache = _cache_file(cache_dir, model_sha256, max_length, values) if cache_dir else None
    matrix = _read(cache) if cache else None
    if matrix is None or matrix.shape[0] != len(ids):
        matrix = _encode(model, values, max_length, batch_size)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, matrix)
            tmp.replace(cache)
    else:
        log.info("dual-encoder teacher vectors of %d texts read from the cache %s", len(ids), cache)
    return {i: matrix[row] for row, i in enumerate(ids)}


def _encode(model: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    from ceindex.models import EncoderConfig, load_encoder

    log.info("embedding %d texts with the dual-encoder teacher %s (max_length %d)", len(texts), model, max_length)
    encoder = load_encoder(EncoderConfig(kind="dual", model=model, max_length=max_length, batch_size=batch_size,
                                         device="cpu", dtype="float32"))
    return np.asarray(encoder.encode(texts, show_progress=len(texts) > batch_size), dtype=np.float32)


def _cache_file(cache_dir: Path, sha: str, max_length: int, texts: list[str]) -> Path:
    digest = hashlib.sha256(json.dumps([sha, max_length, texts]).encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir) / f"teacher-de-{digest}.npy"


def _read(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return np.load(path)
    except (OSError, ValueError):
        log.warning("ignoring the unreadable teacher cache %s", path)
        return None
