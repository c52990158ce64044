"""``ceindex search``: run the search pipeline for one or more queries and print a table or JSON."""
from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options


@click.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--k", "k", type=int, default=10, show_default=True, help="Number of results per query.")
@click.option("--offset", type=int, default=0, show_default=True,
              help="Skip this many results: --offset 10 --k 10 is the second page (offset + k <= --max-depth).")
@click.option("--filter", "filter_json", default=None, metavar="JSON",
              help='Only documents that pass this filter, e.g. \'{"term": {"lang": "en"}}\'; term, terms, range, '
                   "exists, all, any, not over the index's typed fields (see README, Filters and pages).")
@click.option("--json", "as_json", is_flag=True, help="Print results (all scores and stage timings) as JSON.")
@settings_options("opensearch", "search")
def search_command(queries: tuple[str, ...], k: int, offset: int, filter_json: str | None, as_json: bool,
                   **params: Any) -> None:
    """Search an index: BM25 + k-NN recall, fusion, then cross-encoder re-ranking.

    \b
    Examples:
      ceindex search --index scifact "do statins lower LDL cholesterol"
      ceindex search --index docs --fusion minmax --no-rerank --k 20 "query one" "query two"
      ceindex search --index docs --filter '{"range": {"year": {"gte": 2000}}}' --offset 10 "query"

    Queries are embedded with the encoder the index was built with (recorded in the index),
    so they always match the documents' vectors.
    """
    from search_pipeline import SearchPipeline

    settings = settings_from_params(params)
    pipeline = SearchPipeline(settings)
    try:
        results = pipeline.search_many(list(queries), k, filter=filter_json, offset=offset)
    finally:
        pipeline.close()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
        return
    for result in results:
        click.echo(f"\nquery: {result.query}")
        click.echo(f"{'rank':>4}  {'id':<14} {'score':>8} {'bm25':>6} {'knn':>5} {'fused':>5}  title / text")
        for hit in result.hits:
            snippet = textwrap.shorten(f"{hit.title} | {hit.text}" if hit.title else hit.text, 60)
            click.echo(
                f"{hit.rank:>4}  {hit.id[:14]:<14} {hit.score:>8.3f} {_rank(hit.bm25_rank):>6} "
                f"{_rank(hit.knn_rank):>5} {_rank(hit.fused_rank):>5}  {snippet}"
            )
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in result.timings_ms.items() if ms)
        click.echo(f"timings (ms): {stages}")


def _rank(rank: int | None) -> str:
    return "-" if rank is None else str(rank)
