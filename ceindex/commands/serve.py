"""``ceindex serve``: the search pipeline as an HTTP JSON API."""
from __future__ import annotations

import ipaddress
import logging
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options

logger = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@settings_options("opensearch", "search", "serve")
def serve_command(host: str, port: int, **params: Any) -> None:
    """Serve an index over HTTP so apps in any language can search it.

    \b
    Endpoints:
      POST /search   {"query": "...", "k": 10}  or  {"queries": ["...", "..."], "k": 10}
      GET  /healthz  index name, document count and encoder (never needs the API key)
      GET  /docs     interactive OpenAPI description (/openapi.json for the schema)

    \b
    Authentication: set CEINDEX_API_KEY in the server's environment (never in the
    config file); then every endpoint except GET /healthz needs the header
    'Authorization: Bearer <key>' and answers 401 without it.

    \b
    Limits (serve section of the config; flags below): bodies over --max-body-bytes
    and requests with more than --max-queries queries get 413; beyond --max-concurrent
    running and --max-queued waiting searches, 503 with Retry-After; a request running
    longer than --request-timeout gets 504 and its remaining queries are dropped.
    SIGTERM or Ctrl-C stops within a few seconds, cutting in-flight searches short.

    \b
    Re-ranking under load: with --batching (default) the (query, document) pairs
    of concurrent searches are scored together by one scoring thread (each search
    gets its own scores; --batch-wait-ms, --batch-max-pairs), and scores of
    repeated pairs come from an LRU cache (--score-cache-size, 0 = off) keyed by
    the model's weights sha256, length, dtype and runtime. /healthz answers at
    once however busy the searches are.

    \b
    Example:
      export CEINDEX_API_KEY=$(openssl rand -hex 24)
      ceindex serve --index scifact --port 8080 &
      curl -s localhost:8080/search -H 'content-type: application/json' \\
           -H "Authorization: Bearer $CEINDEX_API_KEY" -d '{"query": "statins", "k": 3}'
    """
    from search_pipeline import SearchPipeline
    from search_pipeline.server import api_key_from_env, create_app, run_server, validate_serve_config

    settings = settings_from_params(params)
    validate_serve_config(settings.serve)
    api_key = api_key_from_env()
    if api_key is None and not _is_loopback(host):
        logger.warning("listening on %s without authentication; set CEINDEX_API_KEY to require a key", host)
    pipeline = SearchPipeline(settings)
    pipeline.query_encoder  # load models before accepting requests  # noqa: B018
    if settings.search.rerank:
        pipeline.reranker  # noqa: B018
    run_server(create_app(pipeline, settings.serve, api_key=api_key), host, port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
