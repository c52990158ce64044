"""The cross-encoder as teacher: logit margins CE(q, pos) - CE(q, neg) for MarginMSE distillation.

Scores are cached on disk keyed by the teacher's weights and the exact pairs, so the control run
(same data, same teacher) and a resumed run do not pay for the cross-encoder again.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ceindex.data.files import atomic_write_text

log = logging.getLogger(__name__)


def teacher_margins(
    model: str,
    triples: Sequence[tuple[str, str, str]],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    *,
    max_length: int = 192,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    model_sha256: str = "",
) -> np.ndarray:
    """Margins (float32, one per triple), scoring each distinct (query, doc) pair once."""
    pairs = sorted({(q, p) for q, p, _ in triples} | {(q, n) for q, _, n in triples})
    texts = [(queries[q], docs[d]) for q, d in pairs]
    cache = _cache_file(cache_dir, model_sha256, max_length, pairs, texts) if cache_dir else None
    scores: dict[tuple[str, str], float] | None = _read_cache(cache) if cache else None
    if scores is None:
        from ceindex.models.scorer import CrossEncoderReranker

        log.info("scoring %d (query, document) pairs with the teacher %s (max_length %d)", len(pairs), model, max_length)
        reranker = CrossEncoderReranker(model, batch_size=batch_size, max_length=max_length, dtype="float32", device="cpu")
        values = _score_with_progress(reranker, texts, batch_size)
        scores = {pair: float(v) for pair, v in zip(pairs, values)}
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps([[q, d, s] for (q, d), s in scores.items()]))
    else:
        log.info("teacher scores of %d pairs read from the cache %s", len(pairs), cache)
    margins = np.array([scores[(q, p)] - scores[(q, n)] for q, p, n in triples], dtype=np.float32)
    log.info("teacher margins: mean %.2f, std %.2f, %.0f%% positive", margins.mean(), margins.std(),
             100.0 * float((margins > 0).mean()))
    return margins


def _score_with_progress(reranker, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
    from tqdm.auto import tqdm

    step = batch_size * 8
    out = []
    for start in tqdm(range(0, len(pairs), step), desc="teacher", unit="chunk", disable=len(pairs) <= step):
        out.append(reranker.score(pairs[start : start + step]))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _cache_file(
    cache_dir: Path, sha: str, max_length: int, pairs: list[tuple[str, str]], texts: list[tuple[str, str]]
) -> Path:
    digest = hashlib.sha256(json.dumps([sha, max_length, pairs, texts]).encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir) / f"teacher-{digest}.json"


def _read_cache(path: Path) -> dict[tuple[str, str], float] | None:
    if not path.is_file():
        return None
    try:
        return {(q, d): float(s) for q, d, s in json.loads(path.read_text(encoding="utf-8"))}
    except (ValueError, TypeError):
        log.warning("ignoring the unreadable teacher cache %s", path)
        return None
