"""One ONNX Runtime session / OpenVINO compiled model shared by several threads (as `serve` shares the re-ranker and
the query encoder) gives exactly the single-threaded answers."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from ceindex.models import EncoderConfig, load_encoder
from ceindex.models.scorer import CrossEncoderReranker
from tests.conftest import FIXTURE_CE, SCIFACT, require_shared

pytestmark = pytest.mark.reliability

THREADS, PER_THREAD = 6, 12


def _texts(name: str, n: int) -> list[str]:
    lines = (require_shared(SCIFACT) / name).read_text(encoding="utf-8").splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    return [f"{row.get('title', '')} {row['text']}".strip() for row in rows]


def _concurrent_mismatches(work: Callable[[int], np.ndarray], reference: Sequence[np.ndarray]) -> int:
    def one_thread(seed: int) -> int:
        order = [random.Random(seed * 7919 + j).randrange(len(reference)) for j in range(PER_THREAD)]
        return sum(not np.array_equal(work(i), reference[i]) for i in order)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return sum(pool.map(one_thread, range(THREADS)))


@pytest.mark.parametrize("runtime,dtype", [("onnx", "float32"), ("onnx", "int8"), ("openvino", "float32")])
def test_reranker_threads_equal_one_thread(tmp_path: Path, runtime: str, dtype: str) -> None:
    reranker = CrossEncoderReranker(str(require_shared(FIXTURE_CE)), batch_size=4, max_length=64, device="cpu",
                                    runtime=runtime, dtype=dtype, export_root=tmp_path)
    queries, docs = _texts("queries.jsonl", 6), _texts("corpus.jsonl", 6)
    # batches of different sizes and lengths, as concurrent searches send them
    batches = [[(q, d) for d in docs[: 2 + i % 5]] for i, q in enumerate(queries)]
    reference = [reranker.score(batch) for batch in batches]
    assert _concurrent_mismatches(lambda i: reranker.score(batches[i]), reference) == 0


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_encoder_threads_equal_one_thread(tmp_path: Path, runtime: str) -> None:
    encoder = load_encoder(EncoderConfig(model=str(require_shared(FIXTURE_CE)), layer=1, max_length=64, device="cpu",
                                         runtime=runtime), export_root=tmp_path)
    queries = _texts("queries.jsonl", 30)
    batches = [[q] for q in queries[:10]] + [queries[i : i + 4] for i in range(10, 30, 4)]
    reference = [encoder.encode(batch) for batch in batches]
    assert _concurrent_mismatches(lambda i: encoder.encode(batches[i]), reference) == 0
