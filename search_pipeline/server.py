"""HTTP JSON API over the search pipeline (FastAPI): POST /search, GET /healthz, OpenAPI at /docs.

Every failure a client can cause is a 4xx with a message; cluster trouble is a 503 or 504, never a bare 500.
"""
from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field

from ceindex.errors import BackendError, CeindexError, ConfigError, InputError
from search_pipeline.pipeline import MAX_K, SearchPipeline, SearchResult

logger = logging.getLogger(__name__)


class SearchRequest(BaseModel):
    query: str | None = Field(None, description="One query.", examples=["do statins lower cholesterol"])
    queries: list[str] | None = Field(None, description="Several queries (batched: one encode, one msearch).")
    k: int = Field(10, ge=1, le=MAX_K, description="Results per query.")
    model_config = {"extra": "forbid"}


class SearchResponse(BaseModel):
    index: str
    results: list[SearchResult]


def create_app(pipeline: SearchPipeline) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    app = FastAPI(
        title="ceindex search",
        version="1",
        description="Hybrid recall (BM25 + k-NN over early-layer cross-encoder vectors), fusion, cross-encoder re-ranking.",
    )

    @app.exception_handler(CeindexError)
    async def _ceindex_error(_: Request, exc: CeindexError) -> JSONResponse:
        status = 400 if isinstance(exc, (InputError, ConfigError)) else 503
        if isinstance(exc, BackendError) and "timed out" in str(exc):
            status = 504
        return JSONResponse(status_code=status, content={"error": str(exc)})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while searching")
        return JSONResponse(status_code=503, content={"error": f"search failed: {type(exc).__name__}: {exc}"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        info = pipeline.backend.info(pipeline.index)
        return {"status": "ok", "index": info.name, "physical": info.physical, "documents": info.count,
                "encoder": info.encoder.to_dict()}

    @app.post("/search", response_model=SearchResponse)
    async def search(request: SearchRequest) -> dict[str, Any]:
        if (request.query is None) == (request.queries is None):
            raise InputError("give exactly one of 'query' (a string) or 'queries' (a list of strings)")
        queries = [request.query] if request.query is not None else list(request.queries or [])
        if not queries:
            raise InputError("'queries' is empty")
        results = await run_in_threadpool(pipeline.search_many, queries, request.k)
        return {"index": pipeline.index, "results": results}

    return app
