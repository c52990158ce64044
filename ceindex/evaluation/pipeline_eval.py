"""The evaluation driver behind ``ceindex eval`` (and the demo): systems, extra runs, re-rank-only, tuning."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceindex.config import Settings
from ceindex.errors import BackendError, ConfigError, InputError
from ceindex.evaluation.report import EvalReport, package_versions, score_runs, write_report
from ceindex.evaluation.runner import SystemRun, ranked_scores, rerank_only, run_system
from ceindex.evaluation.systems import System, parse_systems
from ceindex.evaluation.topics import Topics, load_topics
from ceindex.evaluation.tuning import FusionTuning, collect_stage_lists, tune_fusion, write_tuned_config

logger = logging.getLogger(__name__)

TUNED_SYSTEM = "tuned"  # the eval system that runs the tuned fusion setting


@dataclass
class EvalRequest:
    data_dir: Path | None = None
    split: str = "test"
    queries_file: Path | None = None
    qrels_file: Path | None = None
    systems: str = ""
    baseline: str | None = None
    extra_runs: list[Path] = field(default_factory=list)
    candidates: Path | None = None
    tune_split: str | None = None
    write_config: Path | None = None  # with tune_split: the tuned settings as a YAML config file
    depth: int = 100
    query_batch: int = 1
    progress: bool = True
    command: str = ""
    filter: str | None = None  # every system searches only the documents this filter keeps (ceindex.filters)


def _read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    from ranx import Run

    try:
        return Run.from_file(str(path), kind="trec").to_dict()
    except Exception as exc:  # noqa: BLE001 - ranx raises bare errors on malformed lines
        raise InputError(f"{path}: not a TREC run file (qid Q0 docid rank score tag): {exc}") from None


def _candidate_texts(pipeline: Any, data_dir: Path | None, wanted: set[str]) -> dict[str, str]:
    if pipeline is not None:
        return {doc_id: doc.body for doc_id, doc in pipeline.backend.fetch(pipeline.index, sorted(wanted)).items()}
    if data_dir is None:
        raise InputError("re-rank-only mode needs document texts: give --index of a built index or --data with corpus.jsonl")
    from ceindex.data.corpus import Document, corpus_path, read_documents

    return {
        record.id: record.body
        for record in read_documents(corpus_path(data_dir, None))
        if isinstance(record, Document) and record.id in wanted
    }


def evaluate(settings: Settings, request: EvalRequest, out_dir: Path | None) -> tuple[EvalReport, dict[str, str]]:
    """Run the requested systems (and candidate / external runs) over the judged queries, score them with ranx,
    and write the report to ``out_dir`` when given; return the report and the paths written.

    With ``tune_split`` the fusion is tuned there first and run as the system 'tuned' (and written as a config
    file to ``write_config`` when given)."""
    _check_request(request)
    topics = load_topics(request.data_dir, request.split, queries_file=request.queries_file,
                         qrels_file=request.qrels_file)
    systems = _requested_systems(request)
    pipeline = _open_pipeline(settings, request, systems)
    tuning: FusionTuning | None = None
    paths: dict[str, str] = {}
    try:
        if request.tune_split:
            tuning = _tune_fusion(settings, pipeline, request)
            systems = [*systems, _tuned_system(tuning)]
            if request.write_config is not None:
                paths["config"] = str(write_tuned_config(request.write_config, settings, tuning,
                                                         pipeline.info.encoder, request.command))
        runs = _collect_runs(settings, request, pipeline, systems, topics)
    finally:
        if pipeline is not None:
            pipeline.close()
    baseline = _baseline(request, runs)
    provenance = _provenance(settings, request, topics, pipeline)
    report = score_runs(topics.qrels, runs, baseline=baseline, unjudged=len(topics.unjudged), provenance=provenance)
    report.fusion_tuning = tuning.to_dict() if tuning is not None else None
    if out_dir is not None:
        paths = write_report(report, runs, out_dir) | paths
    return report, paths


def _check_request(request: EvalRequest) -> None:
    """Refuse flag combinations that cannot work before any query runs."""
    if request.write_config is not None and not request.tune_split:
        raise ConfigError("--write-config writes the tuned fusion settings: give --tune-fusion-on SPLIT too")
    if request.tune_split and request.data_dir is None:
        raise ConfigError("--tune-fusion-on needs --data (a BEIR folder with that split)")
    if request.write_config is not None and request.write_config.is_dir():
        raise ConfigError(f"--write-config {request.write_config} is a folder; give a file path, e.g. tuned.yaml")


def _requested_systems(request: EvalRequest) -> list[System]:
    systems = parse_systems(request.systems) if request.systems.strip() else []
    if not systems and request.candidates is None and not request.extra_runs and not request.tune_split:
        raise ConfigError("nothing to evaluate: give --systems, --candidates, --runs or --tune-fusion-on")
    return systems


def _open_pipeline(settings: Settings, request: EvalRequest, systems: list[System]) -> Any:
    """The search pipeline on ``settings.index``; None when nothing needs it, or when re-rank-only mode finds no
    index (the texts then come from the corpus file)."""
    from search_pipeline import SearchPipeline

    if not systems and request.candidates is None and not request.tune_split:
        return None
    try:
        return SearchPipeline(settings)
    except BackendError:
        if systems or request.tune_split:
            raise
        logger.info("no index '%s': re-ranking with texts from the corpus file", settings.index)
        return None


def _collect_runs(
    settings: Settings, request: EvalRequest, pipeline: Any, systems: list[System], topics: Topics
) -> list[SystemRun]:
    """In report order: the systems (the tuned one last), the candidates and their re-ranking, external runs."""
    runs = [
        run_system(pipeline, system, topics.queries, depth=request.depth, batch_size=request.query_batch,
                   progress=request.progress, filter=pipeline.parse_filter(request.filter) if request.filter else None)
        for system in systems
    ]
    if request.candidates is not None:
        runs += _candidate_runs(settings, request, pipeline, topics)
    runs += [SystemRun(path.stem, _read_trec_run(path)) for path in request.extra_runs]
    return runs


def _tune_fusion(settings: Settings, pipeline: Any, request: EvalRequest) -> FusionTuning:
    """Tune the fusion step on ``request.tune_split`` with the pipeline's own recall lists and fusion code."""
    split = request.tune_split or "train"
    tuning_topics = load_topics(request.data_dir, split)
    if split == request.split and request.queries_file is None:
        logger.warning("fusion tuned and scored on the same split (%s): the tuned row is optimistic", split)
    lists = collect_stage_lists(pipeline, tuning_topics.queries, depth=request.depth,
                                batch_size=max(8, request.query_batch), progress=request.progress)
    return tune_fusion(tuning_topics.qrels, lists, split=split, depth=request.depth, configured=settings.search)


def _tuned_system(tuning: FusionTuning) -> System:
    """The tuned setting as an eval system, without re-ranking (what was tuned is the fusion step)."""
    return System(TUNED_SYSTEM, {**tuning.served.search_changes(), "rerank": False})


def _candidate_runs(settings: Settings, request: EvalRequest, pipeline: Any, topics: Topics) -> list[SystemRun]:
    """Re-rank-only mode: the given candidate run as it is, and re-ranked by the cross-encoder."""
    candidate_run = _read_trec_run(request.candidates)  # type: ignore[arg-type]
    ordered = {q: [d for d, _ in sorted(docs.items(), key=lambda x: -x[1])] for q, docs in candidate_run.items()}
    given = SystemRun("candidates", {q: ranked_scores(ids[: request.depth]) for q, ids in ordered.items()})
    top = settings.search.rerank_top if request.depth >= settings.search.rerank_top else request.depth
    wanted = {d for q in topics.queries for d in ordered.get(q, [])[:top]}
    texts = _candidate_texts(pipeline, request.data_dir, wanted)
    reranked = rerank_only(_reranker(settings, pipeline), "candidates+rerank", topics.queries, ordered, texts,
                           top=top, depth=request.depth, progress=request.progress)
    return [given, reranked]


def _reranker(settings: Settings, pipeline: Any) -> Any:
    """The pipeline's cross-encoder, or (no index) the configured one."""
    if pipeline is not None:
        return pipeline.reranker
    from ceindex.models.scorer import CrossEncoderReranker

    return CrossEncoderReranker(
        settings.search.rerank_model or _default_ce(),
        batch_size=settings.search.rerank_batch_size, max_length=settings.search.rerank_max_length,
        dtype=settings.search.rerank_dtype, runtime=settings.search.rerank_runtime, export_root=settings.export_root)


def _baseline(request: EvalRequest, runs: list[SystemRun]) -> str:
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs share a name: {names}; rename an external run file")
    baseline = request.baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"--baseline {baseline!r} is not one of: {', '.join(names)}")
    return baseline


def _provenance(settings: Settings, request: EvalRequest, topics: Topics, pipeline: Any) -> dict[str, Any]:
    """What the report was made from: command, data and its hashes, index, backend, encoder, settings, versions."""
    return {
        "command": request.command,
        "data": topics.source,
        "split": request.split,
        "queries_sha256": topics.queries_sha256,
        "qrels_sha256": topics.qrels_sha256,
        "unjudged_query_ids": topics.unjudged[:50],
        "index": settings.index if pipeline is not None else None,
        "backend": settings.opensearch.url or ("embedded" if pipeline is not None else None),
        "encoder": pipeline.info.encoder.to_dict() if pipeline is not None else None,
        "settings": settings.to_dict(),
        "versions": package_versions(),
    }


def _default_ce() -> str:
    from ceindex.models.config import default_ce_model

    return default_ce_model()


__all__ = ["EvalRequest", "evaluate"]
