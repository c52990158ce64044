"""``ceindex eval``: ranx evaluation of retrieval systems (the real search pipeline) against qrels."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options
from ceindex.evaluation.systems import DEFAULT_SYSTEMS

logger = logging.getLogger(__name__)


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="BEIR folder with queries.jsonl and qrels/<split>.tsv (and corpus.jsonl for --candidates).")
@click.option("--split", default="test", show_default=True, help="Qrels split to evaluate.")
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TREC topics file (qid<TAB>text) instead of --data.")
@click.option("--qrels", "qrels_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="TREC qrels file (qid iter docid rel) instead of --data.")
@click.option("--systems", default=None,
              help=f"Comma list of bm25, knn, hybrid-rrf, hybrid-minmax, each optionally +rerank "
                   f"[default: {DEFAULT_SYSTEMS}; none with --candidates].")
@click.option("--baseline", "baseline", default=None, help="System the others are tested against (default: the first).")
@click.option("--runs", "extra_runs", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="External TREC run file to compare alongside (repeatable).")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Re-rank-only mode: a TREC run whose top --rerank-top documents the cross-encoder re-ranks.")
@click.option("--tune-fusion-on", "tune_split", default=None,
              help="Tune the fusion on this split (min-max weights and RRF k, ranked by the very fusion code search "
                   "and serve run, on the raw BM25 / k-NN scores), add the system 'tuned', and report whether k-NN "
                   "helps at all (if not, 'tuned' is BM25 alone).")
@click.option("--write-config", "write_config", type=click.Path(dir_okay=False), default=None,
              help="With --tune-fusion-on: write the tuned settings as a YAML config file to pass as --config to "
                   "build, search and serve.")
@click.option("--depth", default=100, show_default=True, help="Results kept per query (Recall@100 needs 100).")
@click.option("--query-batch", default=1, show_default=True,
              help="Queries per pipeline call; 1 gives true per-query latencies, more is faster.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json, report.md, runs/*.trec, chart.png, report.html.")
@click.option("--filter", "filter_json", default=None, metavar="JSON",
              help='Evaluate every system on the documents this filter keeps, e.g. \'{"term": {"lang": "en"}}\' '
                   "(see README, Filters and pages).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the Markdown table.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@settings_options("opensearch", "search")
def eval_command(data_dir: str | None, split: str, queries_file: str | None, qrels_file: str | None,
                 systems: str | None, baseline: str | None, extra_runs: tuple[str, ...], candidates_file: str | None,
                 tune_split: str | None, write_config: str | None, depth: int, query_batch: int,
                 out_dir: str | None, filter_json: str | None, as_json: bool, progress: bool, **params: Any) -> None:
    """Score retrieval systems against relevance judgements with ranx.

    \b
    Examples:
      ceindex eval --data ./scifact --index scifact --out reports/scifact
      ceindex eval --data ./dl19 --candidates ./dl19/bm25-top100.trec --out reports/dl19-rerank
      ceindex eval --data ./scifact --index scifact --systems bm25 --tune-fusion-on train --write-config tuned.yaml

    Each system runs every judged query through the same search pipeline apps use.
    Reports nDCG@10, MRR@10, Hits@10 (share of queries with a relevant hit in the top 10),
    Recall@100 and MAP, a paired t-test against the baseline, and per-stage latency p50/p95.
    Queries without judgements are counted and left out.
    """
    from ceindex.evaluation.pipeline_eval import EvalRequest, evaluate

    settings = settings_from_params(params)
    request = EvalRequest(
        data_dir=Path(data_dir) if data_dir else None, split=split,
        queries_file=Path(queries_file) if queries_file else None, qrels_file=Path(qrels_file) if qrels_file else None,
        systems=systems if systems is not None else ("" if candidates_file else DEFAULT_SYSTEMS),
        baseline=baseline, extra_runs=[Path(p) for p in extra_runs],
        candidates=Path(candidates_file) if candidates_file else None, tune_split=tune_split,
        write_config=Path(write_config) if write_config else None,
        depth=depth, query_batch=query_batch, progress=progress, command=" ".join(sys.argv), filter=filter_json,
    )
    report, paths = evaluate(settings, request, Path(out_dir) if out_dir else None)
    if as_json:
        click.echo(json.dumps(report.to_dict() | {"files": paths}, indent=2))
        return
    click.echo(report.markdown())
    click.echo("")
    click.echo(report.latency_markdown())
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
