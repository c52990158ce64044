"""The cross-encoder as teacher: logit margins CE(q, pos) - CE(q, neg) for MarginMSE distillation.

Scores are cached on disk per pair (keyed by the teacher's weights, max length and the pair's texts), so the
control run, a resumed run and any other mix of sources sharing pairs do not pay for the cross-encoder again.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ceindex.distill.cache import ScoreStore, text_key

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
    """Margins (float32, one per triple), scoring each distinct (query, doc) pair once, and only pairs no earlier
    run has scored (cached by text)."""
    pairs = sorted({(q, p) for q, p, _ in triples} | {(q, n) for q, _, n in triples})
    texts = [(queries[q], docs[d]) for q, d in pairs]
    store = ScoreStore(cache_dir, f"teacher-ce-{model_sha256[:16]}-{max_length}")

    loaded: list = []

    def compute(missing: list[int]) -> np.ndarray:
        if not loaded:
            from ceindex.models.scorer import CrossEncoderReranker

            loaded.append(CrossEncoderReranker(model, batch_size=batch_size, max_length=max_length, dtype="float32",
                                               device="cpu"))
        log.info("scoring %d (query, document) pairs with the teacher %s (max_length %d)", len(missing), model,
                 max_length)
        return _score_with_progress(loaded[0], [texts[i] for i in missing], batch_size)

    values = store.get_or_compute([text_key(q, d) for q, d in texts], compute)
    scores = {pair: float(v) for pair, v in zip(pairs, values)}
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
