"""The search pipeline: hybrid recall (BM25 + k-NN), fusion, then cross-encoder re-ranking.

The same object serves the Python API, ``ceindex search``, ``ceindex serve`` and ``ceindex eval``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence


from ceindex.backends import Backend, Hit, open_backend
from ceindex.config import FUSIONS, SERVER_FUSIONS, SearchConfig, Settings, load_settings
from ceindex.errors import BackendError, ConfigError, EncoderMismatchError, InputError
from ceindex.filters import Filter, parse_field_types, parse_filter
from ceindex.models import Encoder, encoder_config_from_description, load_encoder
from ceindex.models.config import default_ce_model
from search_pipeline.fusion import fuse_recall

logger = logging.getLogger(__name__)

MAX_K = 1000
MAX_DEPTH = 10_000  # deepest page position: OpenSearch's and Elasticsearch's default result window and k-NN k
FUSION_RECHECK_S = 30.0  # a long-lived pipeline re-decides server-side fusion this often (an alias swap may move
# the index onto a build with another shard count): one small request to the backend, not one per query
STAGES = ("encode", "bm25", "knn", "fusion", "fetch", "rerank")


@dataclass
class SearchHit:
    id: str
    title: str
    text: str
    rank: int
    score: float  # the final score: re-rank score when re-ranked, else the fused score
    bm25_score: float | None = None
    bm25_rank: int | None = None
    knn_score: float | None = None
    knn_rank: int | None = None
    fused_score: float | None = None
    fused_rank: int | None = None
    rerank_score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    query: str
    hits: list[SearchHit]
    timings_ms: dict[str, float]  # per stage; for search_many, the batch's time divided by its size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_search_config(config: SearchConfig) -> None:
    if not (config.bm25 or config.knn):
        raise ConfigError("both BM25 and k-NN recall are switched off; enable at least one (--bm25 / --knn)")
    if config.fusion not in FUSIONS:
        raise ConfigError(f"search.fusion must be one of {', '.join(FUSIONS)}; got {config.fusion!r}")
    for name in ("recall_n", "rrf_k", "rerank_top", "rerank_batch_size", "max_query_chars", "max_depth"):
        if getattr(config, name) < 1:
            raise ConfigError(f"search.{name} must be >= 1, got {getattr(config, name)}")
    if config.recall_n > MAX_K:
        raise ConfigError(f"search.recall_n must be <= {MAX_K}, got {config.recall_n}")
    if config.max_depth > MAX_DEPTH:
        raise ConfigError(f"search.max_depth must be <= {MAX_DEPTH} (the engines' result window), got {config.max_depth}")
    if config.server_fusion not in SERVER_FUSIONS:
        raise ConfigError(f"search.server_fusion must be {', '.join(SERVER_FUSIONS[:-1])} or {SERVER_FUSIONS[-1]}; "
                          f"got {config.server_fusion!r}")
    if config.bm25_weight < 0 or config.knn_weight < 0:
        raise ConfigError("fusion weights must be >= 0")


class SearchPipeline:
    """``SearchPipeline.from_config("ceindex.yaml").search("query", k=10)``."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        *,
        query_encoder: Encoder | None = None,
        reranker: Any | None = None,
    ) -> None:
        validate_search_config(settings.search)
        self.settings = settings
        self.config = settings.search
        self.index = settings.index
        self.backend = backend or open_backend(settings)
        self.info = self.backend.info(self.index)
        self.field_types = parse_field_types(self.info.fields, f"index '{self.index}' fields")
        self._encoder = query_encoder
        self._reranker = reranker
        self._server_fusion: bool | None = None
        self._fusion_decided_at = -float("inf")
        self._fusion_caveat: str | None = None  # the caveat last logged, so a recheck logs only a change
        self._load_lock = threading.RLock()  # threads share one pipeline: models are loaded once, by one of them
        if self._encoder is not None:
            self._check_encoder(self._encoder)

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any] | Settings, **overrides: Any) -> "SearchPipeline":
        """Build from a YAML path, a dict shaped like the YAML file, or Settings."""
        if isinstance(config, Settings):
            settings = config
        elif isinstance(config, Mapping):
            settings = load_settings(data=config)
        else:
            settings = load_settings(config)
        if overrides:
            settings = replace(settings, search=replace(settings.search, **overrides))
        return cls(settings)

    def with_search(self, **changes: Any) -> "SearchPipeline":
        """A pipeline sharing this one's backend and models with other search settings (e.g. for eval)."""
        settings = replace(self.settings, search=replace(self.config, **changes))
        return SearchPipeline(settings, self.backend, query_encoder=self._encoder, reranker=self._reranker)

    def with_reranker(self, reranker: Any) -> "SearchPipeline":
        """A pipeline sharing this one's backend, settings and query encoder that re-ranks with ``reranker``
        (anything with the re-ranker's ``score(pairs)``; ``serve`` passes its score cache and micro-batcher)."""
        return SearchPipeline(self.settings, self.backend, query_encoder=self._encoder, reranker=reranker)

    @property
    def uses_server_fusion(self) -> bool:
        """Whether BM25 + k-NN are fused inside the backend (OpenSearch hybrid query with its search pipeline).
        Decided on first use and again every :data:`FUSION_RECHECK_S` seconds: ``serve`` outlives alias swaps, and
        ``--server-fusion auto`` must stop fusing in the cluster once the alias points at a several-shard build."""
        with self._load_lock:
            now = time.monotonic()
            if self._server_fusion is None:
                self._server_fusion = self._decide_server_fusion()
                self._fusion_decided_at = now
            elif now - self._fusion_decided_at >= FUSION_RECHECK_S:
                self._fusion_decided_at = now
                try:
                    before, self._server_fusion = self._server_fusion, self._decide_server_fusion()
                    if before != self._server_fusion:
                        logger.info("index '%s' changed: now fusing %s", self.index,
                                    "in the cluster" if self._server_fusion else "in ceindex")
                except BackendError as exc:  # keep the last decision; the search itself reports the cluster
                    logger.warning("could not re-check server-side fusion for index '%s' (%s); keeping %s",
                                   self.index, exc, "server-side" if self._server_fusion else "client-side")
            return self._server_fusion

    def _decide_server_fusion(self) -> bool:
        cfg = self.config
        wanted = cfg.server_fusion != "off" and cfg.bm25 and cfg.knn
        able = wanted and self.backend.server_fusion(cfg.fusion, (cfg.bm25_weight, cfg.knn_weight), cfg.rrf_k)
        if cfg.server_fusion == "on" and cfg.bm25 and cfg.knn and not able:
            raise ConfigError(
                f"server_fusion is 'on' but this backend cannot fuse '{cfg.fusion}' server-side (it needs OpenSearch "
                "with the neural-search plugin; RRF there takes no weights); use --server-fusion auto or off"
            )
        caveat = self.backend.server_fusion_caveat(self.index, cfg.fusion) if able else None
        changed, self._fusion_caveat = caveat != self._fusion_caveat, caveat
        if caveat and cfg.server_fusion == "auto":
            if changed:
                logger.info("fusing in ceindex, not in the cluster (--server-fusion auto): %s", caveat)
            return False
        if caveat and changed:
            logger.warning("--server-fusion on: %s", caveat)
        return bool(able)

    # --- models, loaded on first use --------------------------------------------------------
    @property
    def query_encoder(self) -> Encoder:
        with self._load_lock:
            return self._load_query_encoder() if self._encoder is None else self._encoder

    def _load_query_encoder(self) -> Encoder:
        config = encoder_config_from_description(
            self.info.encoder, batch_size=self.settings.encoder.batch_size, device=self.settings.encoder.device
        )
        encoder = load_encoder(config, export_root=self.settings.export_root)
        self._check_encoder(encoder)
        self._encoder = encoder
        return self._encoder

    def _check_encoder(self, encoder: Encoder) -> None:
        diffs = self.info.encoder.differences(encoder.describe())
        if diffs:
            detail = "; ".join(f"{k}: index has {a!r}, query encoder has {b!r}" for k, (a, b) in diffs.items())
            raise EncoderMismatchError(
                f"the query encoder does not match the one index '{self.index}' was built with ({detail}); "
                "queries must be embedded exactly as the documents were"
            )

    @property
    def reranker(self) -> Any:
        with self._load_lock:
            return self._load_reranker() if self._reranker is None else self._reranker

    def _load_reranker(self) -> Any:
        from ceindex.models.scorer import CrossEncoderReranker

        model = self.config.rerank_model or (
            self.info.encoder.model if self.info.encoder.kind == "ce-layer" else default_ce_model()
        )
        self._reranker = CrossEncoderReranker(
            model,
            batch_size=self.config.rerank_batch_size,
            max_length=self.config.rerank_max_length,
            dtype=self.config.rerank_dtype,
            device=self.settings.encoder.device,
            runtime=self.config.rerank_runtime,
            export_root=self.settings.export_root,
        )
        return self._reranker

    # --- searching --------------------------------------------------------------------------
    def validate(self, queries: Sequence[Any], k: int, offset: int = 0) -> None:
        """Raise InputError for a bad k, offset or query (numbered by position); search_many calls it first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InputError(f"offset must be an integer >= 0, got {offset!r}")
        if offset + k > self.config.max_depth:
            raise InputError(
                f"offset + k = {offset + k} is past the deepest page position, {self.config.max_depth} "
                "(search.max_depth, --max-depth); page less deep or raise it"
            )
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"query {i} is empty or not a string")
            try:
                query.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: the tokenizer would raise a TypeError deep inside
                raise InputError(f"query {i} is not valid Unicode (it contains a lone surrogate)") from None
            if len(query) > self.config.max_query_chars:
                raise InputError(
                    f"query {i} has {len(query)} characters; the limit is {self.config.max_query_chars} (search.max_query_chars)"
                )

    def parse_filter(self, filter: Any) -> Filter | None:
        """A filter (dict, JSON text or parsed) checked against this index's typed fields (InputError if bad)."""
        return parse_filter(filter, self.field_types)

    def search(self, query: str, k: int = 10, *, filter: Any = None, offset: int = 0) -> SearchResult:
        """The hits at positions ``offset + 1 .. offset + k`` of ``query``'s ranking among the documents
        ``filter`` keeps (see ``ceindex.filters``), e.g. ``filter={"term": {"lang": "en"}}``."""
        return self.search_many([query], k, filter=filter, offset=offset)[0]

    def search_many(
        self, queries: Sequence[str], k: int = 10, *, include_text: bool = True, filter: Any = None, offset: int = 0,
    ) -> list[SearchResult]:
        """Search several queries in one go; ``include_text=False`` skips fetching texts the re-ranker does not need.

        ``filter`` restricts every recall (inside the backend's search, so fusion and re-rank see only matching
        documents); ``offset`` pages: the result is positions ``offset + 1 .. offset + k`` of one ranking. Each
        source recalls ``max(recall_n, offset + k)``, so pages are exact slices of one ranking while
        ``offset + k <= recall_n`` (set ``--recall-n`` to the deepest position you page to); the re-rank
        windows (``rerank_top`` each) are re-ranked each in itself, so a page never reorders another page.
        """
        self.validate(queries, k, offset)
        parsed = self.parse_filter(filter)
        if not queries:
            return []
        cfg = self.config
        n = max(cfg.recall_n, offset + k)
        where = {} if parsed is None else {"filter": parsed}  # a backend without filters still serves unfiltered
        timings = dict.fromkeys(STAGES, 0.0)

        def timed(stage: str, fn: Any, *args: Any) -> Any:
            begin = time.perf_counter()
            result = fn(*args)
            timings[stage] += (time.perf_counter() - begin) * 1000
            return result

        bm25_runs: list[list[Hit]] = [[] for _ in queries]
        knn_runs: list[list[Hit]] = [[] for _ in queries]
        if self.uses_server_fusion:
            # One request per query does recall and fusion inside OpenSearch (timed as "fusion").
            vectors = timed("encode", self.query_encoder.encode, list(queries))
            fused_runs = timed("fusion", lambda: self.backend.hybrid(
                self.index, list(queries), vectors, n, cfg.fusion, (cfg.bm25_weight, cfg.knn_weight), cfg.rrf_k,
                cfg.knn_ef_search, **where))
        else:
            if cfg.bm25:
                bm25_runs = timed("bm25", lambda: self.backend.bm25(self.index, list(queries), n, **where))
            if cfg.knn:
                vectors = timed("encode", self.query_encoder.encode, list(queries))
                knn_runs = timed("knn", lambda: self.backend.knn(self.index, vectors, n, cfg.knn_ef_search, **where))
            fused_runs = timed("fusion", self._fuse_all, bm25_runs, knn_runs)
        window = self._rerank_window(offset, k) if cfg.rerank else (0, 0)
        page = (offset, offset + k) if include_text else (0, 0)
        wanted = sorted({h.id for run in fused_runs for h in run[window[0]:window[1]] + run[page[0]:page[1]]})
        docs = timed("fetch", self.backend.fetch, self.index, wanted)
        rerank_scores: list[dict[str, float]] = [{} for _ in queries]
        if cfg.rerank:
            rerank_scores = timed("rerank", self._rerank_all, queries, fused_runs, docs, window)
        per_query = {stage: ms / len(queries) for stage, ms in timings.items()}
        results = []
        for query, bm25, knn, fused, reranked in zip(queries, bm25_runs, knn_runs, fused_runs, rerank_scores):
            hits = self._assemble(fused, bm25, knn, reranked, docs, k, offset)
            results.append(SearchResult(query=query, hits=hits, timings_ms=dict(per_query)))
        return results

    def _rerank_window(self, offset: int, k: int) -> tuple[int, int]:
        """The fused positions ``[start, end)`` to re-rank: every whole window of ``rerank_top`` that the page
        ``[offset, offset + k)`` reaches (a page within the first window: the top ``rerank_top``, as always)."""
        size = self.config.rerank_top
        return (offset // size) * size, ((offset + k - 1) // size + 1) * size

    def _fuse_all(self, bm25_runs: list[list[Hit]], knn_runs: list[list[Hit]]) -> list[list[Hit]]:
        return [fuse_recall(b, v, self.config) for b, v in zip(bm25_runs, knn_runs)]

    def _rerank_all(
        self, queries: Sequence[str], fused_runs: list[list[Hit]], docs: Mapping[str, Any], window: tuple[int, int],
    ) -> list[dict[str, float]]:
        from search_pipeline.rerank import rerank_candidates

        texts = {doc_id: doc.body for doc_id, doc in docs.items()}
        start, end = window
        candidates = [[h.id for h in run[start:end]] for run in fused_runs]
        return rerank_candidates(self.reranker, queries, candidates, texts, end - start)

    def _assemble(
        self,
        fused: list[Hit],
        bm25: list[Hit],
        knn: list[Hit],
        reranked: dict[str, float],
        docs: Mapping[str, Any],
        k: int,
        offset: int = 0,
    ) -> list[SearchHit]:
        bm25_by_id = {h.id: h for h in bm25}
        knn_by_id = {h.id: h for h in knn}
        fused_by_id = {h.id: h for h in fused}
        from search_pipeline.rerank import windowed_order

        order = windowed_order([h.id for h in fused], reranked, self.config.rerank_top)
        hits = []
        for rank, doc_id in enumerate(order[offset:offset + k], start=offset + 1):
            doc = docs.get(doc_id)
            b, v, f = bm25_by_id.get(doc_id), knn_by_id.get(doc_id), fused_by_id[doc_id]
            hits.append(
                SearchHit(
                    id=doc_id,
                    title=doc.title if doc else "",
                    text=doc.text if doc else "",
                    rank=rank,
                    score=reranked.get(doc_id, f.score),
                    bm25_score=b.score if b else None,
                    bm25_rank=b.rank if b else None,
                    knn_score=v.score if v else None,
                    knn_rank=v.rank if v else None,
                    fused_score=f.score,
                    fused_rank=f.rank,
                    rerank_score=reranked.get(doc_id),
                    metadata=doc.metadata if doc else {},
                )
            )
        return hits

    def close(self) -> None:
        self.backend.close()
