"""A bounded, thread-safe LRU cache of cross-encoder scores, for ``ceindex serve``'s repeated queries.

An entry maps (the scoring model's fingerprint, a digest of the (query, document text) pair) to the pair's score.
The fingerprint is the sha256 of everything that changes a score: the weight files' sha256, the tokenizer files'
sha256, the pair length limit, the dtype, the runtime and the device (:func:`scorer_fingerprint`), so two models,
or one model cut at two lengths, never share an entry. Keying by the document's *text* (not its id) means a
document whose text changed in a rebuilt index is scored again.

Memory is bounded by the entry count (``serve.score_cache_size``): the key holds a 16-byte digest, never the texts,
and the fingerprint string is shared by all entries of one model, so an entry costs about 250 bytes whatever the
query and document lengths (65,536 entries: ~16 MB).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DIGEST_BYTES = 16  # 128-bit blake2b: a collision among even billions of pairs is vanishingly unlikely


class PairScorer(Protocol):
    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


@dataclass
class CacheStats:
    entries: int
    capacity: int
    hits: int
    misses: int
    evictions: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def pair_digest(query: str, text: str) -> bytes:
    """A 16-byte digest of one (query, document text) pair; the query's length is hashed first so that the
    boundary between the two texts is unambiguous."""
    encoded = query.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    digest.update(len(encoded).to_bytes(8, "little"))
    digest.update(encoded)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


def scorer_fingerprint(reranker: Any, *, dtype: str | None = None) -> str | None:
    """The sha256 naming what ``reranker`` computes (weights, tokenizer, max length, dtype, runtime, device),
    or None when it cannot be told (a scorer that is not a local or cached model): then nothing is cached.

    A scorer may name itself with a ``cache_key`` string attribute. ``dtype`` is the dtype the scorer was loaded
    in when the scorer does not say (``CrossEncoderReranker`` is given it by the pipeline's settings)."""
    own = getattr(reranker, "cache_key", None)
    if isinstance(own, str) and own:
        return hashlib.sha256(own.encode("utf-8")).hexdigest()
    ref = getattr(reranker, "model_ref", None)
    if not isinstance(ref, str):
        return None
    from ceindex.models.runtime import local_model_dir, tokenizer_sha256, weights_sha256

    try:
        folder = local_model_dir(ref)
        parts = {"weights": weights_sha256(folder), "tokenizer": tokenizer_sha256(folder)}
    except Exception as exc:  # noqa: BLE001 - a model we cannot hash is simply not cached
        logger.warning("the re-ranker's weights could not be hashed (%s); serve's score cache is off", exc)
        return None
    parts |= {"max_length": getattr(reranker, "max_length", None), "dtype": getattr(reranker, "dtype", dtype),
              "runtime": getattr(reranker, "runtime", "torch"), "device": str(getattr(reranker, "device", "cpu"))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


class ScoreCache:
    """LRU of ``(fingerprint, pair digest) -> score`` holding at most ``capacity`` entries; safe across threads."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a score cache needs room for at least one entry, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_many(self, fingerprint: str, digests: Sequence[bytes]) -> list[float | None]:
        """The cached score of each digest (None where absent); hits become the most recently used."""
        out: list[float | None] = []
        with self._lock:
            for digest in digests:
                key = (fingerprint, digest)
                score = self._entries.get(key)
                if score is not None:
                    self._entries.move_to_end(key)
                out.append(score)
            hits = sum(score is not None for score in out)
            self._hits += hits
            self._misses += len(out) - hits
        return out

    def put_many(self, fingerprint: str, digests: Sequence[bytes], scores: Sequence[float]) -> None:
        """Store scores, evicting the least recently used entries beyond ``capacity``."""
        with self._lock:
            for digest, score in zip(digests, scores):
                key = (fingerprint, digest)
                self._entries[key] = float(score)
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self.capacity, self._hits, self._misses, self._evictions)


class CachedScorer:
    """``score(pairs)`` answered from ``cache`` where it can; only the missing pairs reach ``inner``.

    A pair's score is stored exactly as ``inner`` returned it, so a repeated query gets the very same floats."""

    def __init__(self, inner: PairScorer, cache: ScoreCache, fingerprint: str) -> None:
        self.inner = inner
        self.cache = cache
        self.fingerprint = fingerprint

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        digests = [pair_digest(query, text) for query, text in pairs]
        found = self.cache.get_many(self.fingerprint, digests)
        missing = [i for i, score in enumerate(found) if score is None]
        out = np.array([0.0 if score is None else score for score in found], dtype=np.float32)
        if missing:
            scores = np.asarray(self.inner.score([pairs[i] for i in missing]), dtype=np.float32)
            out[missing] = scores
            self.cache.put_many(self.fingerprint, [digests[i] for i in missing], scores.tolist())
        return out
