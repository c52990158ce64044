"""A dual encoder as teacher: its unit vectors of every training text, which the student learns to match.

Computed once per (teacher weights sha256, max length, text) and cached on disk (``ceindex.distill.cache``), so
reruns, resumes, other source mixes and the arms of a benchmark (CE-init, control, random init on the same data) pay for the teacher once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from ceindex.distill.cache import VectorStore, text_key

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
    """Text id -> the teacher's L2-normalised float32 vector (computed only for texts not cached yet)."""
    ids = sorted(texts)
    values = [texts[i] for i in ids]
    store = VectorStore(cache_dir, f"teacher-de-{model_sha256[:16]}-{max_length}")
    matrix = store.get_or_compute([text_key(v) for v in values],
                                  lambda missing: _encode(model, [values[i] for i in missing], max_length, batch_size))
    return {i: matrix[row] for row, i in enumerate(ids)}


_loaded: dict[tuple[str, int, int], object] = {}


def _encode(model: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    from ceindex.models import EncoderConfig, load_encoder

    log.info("embedding %d texts with the dual-encoder teacher %s (max_length %d)", len(texts), model, max_length)
    key = (model, max_length, batch_size)
    if key not in _loaded:
        _loaded.clear()  # one teacher at a time
        _loaded[key] = load_encoder(EncoderConfig(kind="dual", model=model, max_length=max_length,
                                                  batch_size=batch_size, device="cpu", dtype="float32"))
    encoder = _loaded[key]
    return np.asarray(encoder.encode(texts, show_progress=len(texts) > batch_size), dtype=np.float32)  # type: ignore[attr-defined]
