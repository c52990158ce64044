"""``ceindex serve``: the search pipeline as an HTTP JSON API."""
from __future__ import annotations

from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@settings_options("opensearch", "search")
def serve_command(host: str, port: int, **params: Any) -> None:
    """Serve an index over HTTP so apps in any language can search it.

    \b
    Endpoints:
      POST /search   {"query": "...", "k": 10}  or  {"queries": ["...", "..."], "k": 10}
      GET  /healthz  index name, document count and encoder
      GET  /docs     interactive OpenAPI description (/openapi.json for the schema)

    \b
    Example:
      ceindex serve --index scifact --port 8080 &
      curl -s localhost:8080/search -H 'content-type: application/json' -d '{"query": "statins", "k": 3}'
    """
    import uvicorn

    from search_pipeline import SearchPipeline
    from search_pipeline.server import create_app

    settings = settings_from_params(params)
    pipeline = SearchPipeline(settings)
    pipeline.query_encoder  # load models before accepting requests  # noqa: B018
    if settings.search.rerank:
        pipeline.reranker  # noqa: B018
    uvicorn.run(create_app(pipeline), host=host, port=port, log_level="info")
