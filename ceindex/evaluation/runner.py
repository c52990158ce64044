"""Run systems over judged queries with the search pipeline and collect ranx runs plus latencies."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ceindex.evaluation.systems import System
from search_pipeline import STAGES, SearchPipeline, rerank_candidates, reranked_order

if TYPE_CHECKING:
    from ceindex.models.scorer import CrossEncoderReranker

logger = logging.getLogger(__name__)


@dataclass
class SystemRun:
    name: str
    run: dict[str, dict[str, float]]  # qid -> {doc id: score}; scores follow the final ranking
    latencies_ms: list[dict[str, float]] = field(default_factory=list)  # per query, per stage

    def latency_summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        stages = [*STAGES, "total"]
        for stage in stages:
            values = [lat.get(stage, 0.0) for lat in self.latencies_ms]
            if values and any(values):
                out[stage] = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}
        return out


def ranked_scores(ids: Sequence[str]) -> dict[str, float]:
    """Scores that reproduce a final ranking exactly (ranx orders by score)."""
    return {doc_id: float(len(ids) - i) for i, doc_id in enumerate(ids)}


def run_system(
    pipeline: SearchPipeline,
    system: System,
    queries: Mapping[str, str],
    *,
    depth: int = 100,
    batch_size: int = 1,
    progress: bool = True,
    raw_scores: bool = False,
    filter: Any = None,
) -> SystemRun:
    """Every query through ``pipeline`` with ``system``'s stages; batch_size 1 gives per-query latencies.

    The run's scores reproduce the final ranking (``ranked_scores``); ``raw_scores`` keeps each hit's own score
    instead (for a single-list system, the BM25 score or the cosine: what the pipeline's min-max fusion weighs)."""
    configured = pipeline.with_search(**system.search)
    qids = list(queries)
    result = SystemRun(system.name, {})
    with tqdm(total=len(qids), desc=f"eval {system.name}", unit="q", disable=not progress) as bar:
        for start in range(0, len(qids), batch_size):
            chunk = qids[start : start + batch_size]
            for qid, found in zip(chunk, configured.search_many([queries[q] for q in chunk], depth, include_text=False,
                                                                      **({"filter": filter} if filter else {}))):
                result.run[qid] = ({hit.id: float(hit.score) for hit in found.hits} if raw_scores
                                   else ranked_scores([hit.id for hit in found.hits]))
                timings = dict(found.timings_ms)
                timings["total"] = sum(timings.values())
                result.latencies_ms.append(timings)
            bar.update(len(chunk))
    return result


def rerank_only(
    pipeline_reranker: CrossEncoderReranker,
    name: str,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    texts: Mapping[str, str],
    *,
    top: int,
    depth: int = 100,
    progress: bool = True,
) -> SystemRun:
    """Re-rank a given candidate run (e.g. a BM25 top-100) with the cross-encoder, query by query."""
    import time

    result = SystemRun(name, {})
    for qid in tqdm(list(queries), desc=f"eval {name}", unit="q", disable=not progress):
        ids = list(candidates.get(qid, []))
        begin = time.perf_counter()
        scores = rerank_candidates(pipeline_reranker, [queries[qid]], [ids], texts, top)[0]
        elapsed = (time.perf_counter() - begin) * 1000
        result.run[qid] = ranked_scores(reranked_order(ids, scores)[:depth])
        result.latencies_ms.append({"rerank": elapsed, "total": elapsed})
    return result
