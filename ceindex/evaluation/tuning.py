"""Fusion tuning that matches serving (``ceindex eval --tune-fusion-on SPLIT``).

Each tuning query goes through the pipeline once with BM25 alone and once with k-NN alone, keeping every hit of
each recall list with its raw score and rank (the BM25 score and the cosine, as the backend hands them to the
fusion). Every candidate setting is then ranked with ``search_pipeline.fuse_recall``, the very function the
pipeline's fusion step calls, so the metric found for a setting is the metric ``search`` and ``serve`` give with
it. The grid: min-max weights (k-NN 0 to 1 in steps of 0.05, BM25 the rest) and RRF's k at equal weights (RRF
inside OpenSearch takes no weights). When no setting that gives k-NN a weight beats BM25 alone on the tuning
split, the tuned setting is BM25 alone (``search.knn: false``) and the report says so.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import yaml
from tqdm.auto import tqdm

from ceindex.backends import Hit
from ceindex.config import SearchConfig, Settings
from ceindex.data.files import atomic_write_text
from ceindex.evaluation.report import comparable_run
from ceindex.evaluation.runner import SystemRun, ranked_scores
from ceindex.models import encoder_config_from_description
from ceindex.models.base import EncoderDescription
from ceindex.redact import redact
from search_pipeline import SearchPipeline, fuse_recall

logger = logging.getLogger(__name__)

METRIC = "ndcg@10"
MINMAX_KNN_WEIGHTS = tuple(round(i * 0.05, 2) for i in range(21))  # BM25 gets 1 - w
RRF_KS = (5, 10, 20, 40, 60, 100)
QUERY_BATCH = 8


@dataclass(frozen=True)
class FusionChoice:
    """One setting of the fusion step: ``fusion`` is rrf, minmax, or bm25 (BM25 alone: k-NN switched off)."""

    fusion: str
    bm25_weight: float = 1.0
    knn_weight: float = 1.0
    rrf_k: int = 60

    @property
    def uses_knn(self) -> bool:
        return self.fusion != "bm25" and self.knn_weight > 0

    def search_changes(self) -> dict[str, Any]:
        """The ``search`` settings that serve this choice."""
        if self.fusion == "bm25":
            return {"bm25": True, "knn": False}
        return {"bm25": True, "knn": True, "fusion": self.fusion, "bm25_weight": self.bm25_weight,
                "knn_weight": self.knn_weight, "rrf_k": self.rrf_k}

    def describe(self) -> str:
        if self.fusion == "bm25":
            return "BM25 alone (search.knn: false)"
        return f"{self.fusion}, {self.parameters()}"

    def parameters(self) -> str:
        rrf = f"k {self.rrf_k}, " if self.fusion == "rrf" else ""
        return f"{rrf}weights BM25 {self.bm25_weight:g} / k-NN {self.knn_weight:g}"


def grid() -> list[FusionChoice]:
    """Every setting tried, in the order ties are broken (the first best wins: less k-NN weight first)."""
    minmax = [FusionChoice("minmax", round(1.0 - w, 2), w) for w in MINMAX_KNN_WEIGHTS]
    return minmax + [FusionChoice("rrf", 1.0, 1.0, k) for k in RRF_KS]


@dataclass
class StageLists:
    """Per query, the BM25 and the k-NN recall lists exactly as the fusion step receives them."""

    bm25: dict[str, list[Hit]]
    knn: dict[str, list[Hit]]
    n: int  # candidates asked from each list


def collect_stage_lists(
    pipeline: SearchPipeline, queries: Mapping[str, str], *, depth: int, batch_size: int = QUERY_BATCH,
    progress: bool = True,
) -> StageLists:
    """BM25 and k-NN lists of ``max(search.recall_n, depth)`` hits each: what the pipeline fuses for ``k = depth``.

    Asking each single-list pipeline for that many hits returns its whole recall list, raw scores and ranks kept.
    """
    n = max(pipeline.config.recall_n, depth)
    lists = StageLists({}, {}, n)
    stages = (("bm25", lists.bm25), ("knn", lists.knn))
    for stage, out in stages:
        single = pipeline.with_search(bm25=stage == "bm25", knn=stage == "knn", rerank=False)
        qids = list(queries)
        with tqdm(total=len(qids), desc=f"tune: {stage} lists", unit="q", disable=not progress) as bar:
            for start in range(0, len(qids), batch_size):
                chunk = qids[start : start + batch_size]
                for qid, found in zip(chunk, single.search_many([queries[q] for q in chunk], n, include_text=False)):
                    out[qid] = [_stage_hit(hit, stage) for hit in found.hits]
                bar.update(len(chunk))
    return lists


def _stage_hit(hit: Any, stage: str) -> Hit:
    score, rank = (hit.bm25_score, hit.bm25_rank) if stage == "bm25" else (hit.knn_score, hit.knn_rank)
    return Hit(hit.id, float(score), int(rank))


def rank_with(lists: StageLists, choice: FusionChoice, depth: int) -> dict[str, list[str]]:
    """Each query's top ``depth`` ids under ``choice``, ranked by the pipeline's own fusion step."""
    config = replace(SearchConfig(), **choice.search_changes())
    return {qid: [hit.id for hit in fuse_recall(bm25, lists.knn.get(qid, []), config)[:depth]]
            for qid, bm25 in lists.bm25.items()}


def score_ranking(qrels: dict[str, dict[str, int]], ranking: Mapping[str, list[str]], metric: str = METRIC) -> float:
    """``metric`` of a ranking over every judged query, as the report scores runs (no result scores 0)."""
    from ranx import Qrels, evaluate

    ranx_qrels = Qrels(qrels)
    return float(evaluate(ranx_qrels, _run("tuning", ranking, ranx_qrels), metric))


def paired_p_value(qrels: dict[str, dict[str, int]], a: Mapping[str, list[str]], b: Mapping[str, list[str]],
                   metric: str = METRIC) -> float | None:
    """The paired Student t-test's p-value of ``metric`` between two rankings (the report's test); None when the
    two score alike on every query (no test possible)."""
    from ranx import Qrels, compare

    ranx_qrels = Qrels(qrels)
    with warnings.catch_warnings():  # equal differences on every query: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        report = compare(ranx_qrels, [_run("a", a, ranx_qrels), _run("b", b, ranx_qrels)], metrics=[metric],
                         stat_test="student")
    p_value = float(report.to_dict()["b"]["comparisons"]["a"][metric])
    return None if math.isnan(p_value) else p_value


def _run(name: str, ranking: Mapping[str, list[str]], qrels: Any) -> Any:
    return comparable_run(SystemRun(name, {q: ranked_scores(ids) for q, ids in ranking.items() if ids}), qrels)


@dataclass
class FusionTuning:
    """What tuning found on ``split``; ``served`` is the setting written to the config and run as 'tuned'."""

    split: str
    metric: str
    queries: int
    depth: int
    recall_n: int
    served: FusionChoice
    served_score: float
    knn_helps: bool
    p_value: float | None  # paired t-test, best hybrid vs BM25 alone on the tuning split (None: alike everywhere)
    bm25_alone: float
    knn_alone: float
    best_hybrid: FusionChoice
    best_hybrid_score: float
    configured: FusionChoice  # the fusion the eval ran with, untuned
    configured_score: float
    best_minmax: FusionChoice
    best_minmax_score: float
    best_rrf: FusionChoice
    best_rrf_score: float
    tried: list[dict[str, Any]] = field(default_factory=list)  # every grid point and its score

    def verdict(self) -> str:
        metric, split = _label(self.metric), self.split
        best = f"best hybrid {self.best_hybrid_score:.3f} ({self.best_hybrid.describe()})"
        test = f"{metric}, paired t-test p = {'n/a' if self.p_value is None else f'{self.p_value:.2g}'}"
        if self.knn_helps:
            return (f"k-NN helps on {split}: {best} vs BM25 alone {self.bm25_alone:.3f} ({test}); "
                    f"served: {self.served.describe()}")
        return (f"k-NN does not help on {split}: BM25 alone {self.bm25_alone:.3f} vs {best} ({test}); "
                f"served: {self.served.describe()}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.verdict(), "search": self.served.search_changes(),
                               "markdown": self.markdown()}

    def markdown(self) -> str:
        metric = _label(self.metric)
        rows = [
            ("BM25 alone", self.bm25_alone),
            ("k-NN alone", self.knn_alone),
            (f"configured: {self.configured.describe()}", self.configured_score),
            (f"best min-max: {self.best_minmax.parameters()}", self.best_minmax_score),
            (f"best RRF: {self.best_rrf.parameters()}", self.best_rrf_score),
        ]
        lines = [f"Fusion tuned on {self.split} ({self.queries} judged queries, {metric}; raw BM25 / k-NN scores of "
                 f"the top {self.recall_n} each, ranked by the fusion code search and serve run):", "",
                 f"| fusion | {metric} on {self.split} |", "| --- | ---: |"]
        lines += [f"| {name} | {value:.3f} |" for name, value in rows]
        lines += ["", self.verdict()]
        return "\n".join(lines)


def _label(metric: str) -> str:
    return metric.replace("ndcg", "nDCG")


def tune_fusion(
    qrels: dict[str, dict[str, int]], lists: StageLists, *, split: str, depth: int,
    configured: SearchConfig | None = None, metric: str = METRIC,
) -> FusionTuning:
    """Score every grid setting on ``qrels`` and pick the one to serve (BM25 alone unless k-NN beats it)."""
    configured = configured or SearchConfig()
    scored = [(choice, score_ranking(qrels, rank_with(lists, choice, depth), metric)) for choice in grid()]
    bm25_ranking = rank_with(lists, FusionChoice("bm25"), depth)
    bm25_alone = score_ranking(qrels, bm25_ranking, metric)
    knn_alone = score_ranking(qrels, {q: [h.id for h in hits[:depth]] for q, hits in lists.knn.items()}, metric)
    untuned = FusionChoice(configured.fusion, configured.bm25_weight, configured.knn_weight, configured.rrf_k)
    hybrid, hybrid_score = _best([(c, s) for c, s in scored if c.uses_knn])
    best_minmax = _best([(c, s) for c, s in scored if c.fusion == "minmax"])
    best_rrf = _best([(c, s) for c, s in scored if c.fusion == "rrf"])
    knn_helps = hybrid_score > bm25_alone
    served, served_score = (hybrid, hybrid_score) if knn_helps else (FusionChoice("bm25"), bm25_alone)
    tuning = FusionTuning(
        split=split, metric=metric, queries=len(qrels), depth=depth, recall_n=lists.n,
        served=served, served_score=served_score, knn_helps=knn_helps,
        p_value=paired_p_value(qrels, bm25_ranking, rank_with(lists, hybrid, depth), metric),
        bm25_alone=bm25_alone, knn_alone=knn_alone,
        best_hybrid=hybrid, best_hybrid_score=hybrid_score,
        configured=untuned, configured_score=score_ranking(qrels, rank_with(lists, untuned, depth), metric),
        best_minmax=best_minmax[0], best_minmax_score=best_minmax[1], best_rrf=best_rrf[0], best_rrf_score=best_rrf[1],
        tried=[asdict(c) | {"score": s} for c, s in scored],
    )
    logger.info("%s", tuning.verdict())
    return tuning


def _best(scored: list[tuple[FusionChoice, float]]) -> tuple[FusionChoice, float]:
    """The first setting with the highest score (the grid's order breaks ties)."""
    best = scored[0]
    for choice, score in scored[1:]:
        if score > best[1]:
            best = (choice, score)
    return best


def tuned_settings(settings: Settings, tuning: FusionTuning, encoder: EncoderDescription | None) -> Settings:
    """``settings`` with the tuned fusion in ``search`` and, when known, the encoder the index was built with (so
    the file rebuilds the same index); every other key as the eval ran with it."""
    tuned = replace(settings, search=replace(settings.search, **tuning.served.search_changes()))
    if encoder is not None:
        tuned = replace(tuned, encoder=encoder_config_from_description(
            encoder, batch_size=settings.encoder.batch_size, device=settings.encoder.device))
    return tuned


def write_tuned_config(
    path: Path, settings: Settings, tuning: FusionTuning, encoder: EncoderDescription | None, command: str = ""
) -> Path:
    """Write the tuned settings as a YAML config file (``--config`` of build, search, serve, eval); return ``path``.

    Every key is written, so the file does not depend on later defaults. A user name or password in the cluster
    URL is left out (secrets are read from the environment, never from a config file)."""
    data = asdict(tuned_settings(settings, tuning, encoder))
    if data["opensearch"]["url"]:
        data["opensearch"]["url"] = _without_credentials(data["opensearch"]["url"])
    header = [
        f"# ceindex configuration with the fusion tuned by `ceindex eval` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"# command: {redact(command)}" if command else None,
        f"# {tuning.verdict()}",
        f"# tuned on split '{tuning.split}': {tuning.queries} judged queries, {_label(tuning.metric)} "
        f"{tuning.served_score:.4f} with these settings (before any re-ranking)",
        "# pass it as --config to ceindex build / search / serve / eval",
    ]
    text = "\n".join(line for line in header if line) + "\n" + yaml.safe_dump(data, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    logger.info("tuned settings written to %s", path)
    return path


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
