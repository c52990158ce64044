"""Concurrent use of one encoder / one pipeline gives exactly the single-threaded answers.

Before the fix, a layer-0 encoder registered a forward hook per call on a shared module, so concurrent calls
captured each other's tensors (wrong vectors) or ended each other's passes (errors).
"""
from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import pytest

from ceindex.backends import open_backend
from ceindex.config import OpenSearchConfig, SearchConfig, Settings
from ceindex.data.corpus import corpus_path
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from search_pipeline import SearchPipeline
from tests.conftest import BACKEND_PARAMS, FIXTURE_CE, SAMPLE, SCIFACT, require_shared
from tests.serving import serving

pytestmark = pytest.mark.reliability

THREADS, PER_THREAD = 8, 100
T = TypeVar("T")


def _scifact_queries(n: int) -> list[str]:
    lines = (require_shared(SCIFACT) / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def _sample_queries() -> list[str]:
    lines = (SAMPLE / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def _hammer(work: Callable[[int], T], items: int) -> tuple[list[list[tuple[int, T]]], list[BaseException]]:
    """THREADS threads each run ``work(i)`` PER_THREAD times over shuffled item indices; results per thread."""

    def one_thread(seed: int) -> list[tuple[int, T]]:
        order = [random.Random(seed * 7919 + j).randrange(items) for j in range(PER_THREAD)]
        return [(i, work(i)) for i in order]

    errors: list[BaseException] = []
    outputs: list[list[tuple[int, T]]] = []
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for future in [pool.submit(one_thread, seed) for seed in range(THREADS)]:
            try:
                outputs.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - counted and reported by the test
                errors.append(exc)
    return outputs, errors


@pytest.mark.parametrize("layer", [0, 1])
def test_encoder_8_threads_equal_one_thread(layer: int) -> None:
    encoder = load_encoder(EncoderConfig(model=str(require_shared(FIXTURE_CE)), layer=layer, max_length=64))
    queries = _scifact_queries(50)
    # single queries and small mixed batches, as the server and the Python API send them
    batches = [[q] for q in queries] + [queries[i : i + 3] for i in range(0, len(queries), 3)]
    reference = [encoder.encode(batch) for batch in batches]

    outputs, errors = _hammer(lambda i: encoder.encode(batches[i]), len(batches))

    assert errors == []
    wrong = sum(not np.array_equal(vectors, reference[i]) for run in outputs for i, vectors in run)
    assert wrong == 0, f"{wrong} of {THREADS * PER_THREAD} concurrent encodes differ from the single-threaded vectors"


def _signature(results: Sequence) -> list[list[tuple[str, float | None, float | None]]]:
    return [[(h.id, h.rerank_score, h.fused_score) for h in r.hits] for r in results]


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def tiny_indexes(request: pytest.FixtureRequest, tiny_ce_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Layer-0 and layer-1 indexes of the sample corpus (tiny CE) on one backend; returns their base settings."""
    home = tmp_path_factory.mktemp("concurrency-home")
    base = Settings(home=str(home), search=SearchConfig(recall_n=10, rerank_top=5, rerank_max_length=64))
    if request.param == "opensearch":
        base = replace(base, opensearch=OpenSearchConfig(url=request.getfixturevalue("opensearch_url")))
    for layer in (0, 1):
        settings = replace(base, index=f"conc{os.getpid()}-layer{layer}",
                           encoder=EncoderConfig(model=str(tiny_ce_dir), layer=layer, max_length=64))
        backend = open_backend(settings)
        try:
            build_index(backend, load_encoder(settings.encoder), corpus_path(SAMPLE, None), settings.index,
                        settings.build, rejects_path=home / "rejects.jsonl", progress=False)
        finally:
            backend.close()
    return base


@pytest.mark.parametrize("layer", [0, 1])
def test_pipeline_8_threads_equal_one_thread(layer: int, tiny_indexes: Settings, one_torch_thread: None) -> None:
    pipeline = SearchPipeline(replace(tiny_indexes, index=f"conc{os.getpid()}-layer{layer}"))
    queries = _sample_queries()
    reference = [_signature([pipeline.search(q, k=5)]) for q in queries]

    outputs, errors = _hammer(lambda i: _signature([pipeline.search(queries[i], k=5)]), len(queries))

    pipeline.close()
    assert errors == []
    wrong = sum(signature != reference[i] for run in outputs for i, signature in run)
    assert wrong == 0, f"{wrong} of {THREADS * PER_THREAD} concurrent searches differ from the single-threaded answer"


@pytest.mark.parametrize("tiny_indexes", ["embedded"], indirect=True)  # the HTTP layer is backend-independent
def test_serve_8_clients_equal_one_client(tiny_indexes: Settings, one_torch_thread: None) -> None:
    """8 concurrent HTTP clients x 100 requests against one `serve` app: every answer 200 and equal to one client's."""
    import threading

    import httpx

    from search_pipeline.server import create_app

    pipeline = SearchPipeline(replace(tiny_indexes, index=f"conc{os.getpid()}-layer0"))
    queries = _sample_queries()

    def ask(client: httpx.Client, url: str, i: int) -> tuple[int, list]:
        response = client.post(f"{url}/search", json={"query": queries[i], "k": 5}, timeout=60)
        hits = response.json()["results"][0]["hits"] if response.status_code == 200 else []
        return response.status_code, [(h["id"], h["rerank_score"]) for h in hits]

    local = threading.local()
    try:
        with serving(create_app(pipeline)) as url:
            with httpx.Client() as client:
                reference = [ask(client, url, i) for i in range(len(queries))]

            def work(i: int) -> tuple[int, list]:
                if not hasattr(local, "client"):
                    local.client = httpx.Client()
                return ask(local.client, url, i)

            outputs, errors = _hammer(work, len(queries))
    finally:
        pipeline.close()
    assert errors == [] and all(status == 200 for status, _ in reference)
    wrong = sum(answer != reference[i] for run in outputs for i, answer in run)
    assert wrong == 0, f"{wrong} of {THREADS * PER_THREAD} concurrent HTTP answers differ from the single-client answer"
