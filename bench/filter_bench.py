"""Latency of filtered vs unfiltered hybrid search on SciFact with planted metadata, per backend.

    .venv/bin/python bench/filter_bench.py [--queries 40] [--layer 1] [--opensearch URL]

Every document gets ``bucket`` = sha256(doc id) mod 100 (deterministic), so ``{"range": {"bucket": {"lt": P}}}``
keeps P% of the corpus. For each backend (embedded; the OpenSearch test node, with its server-side hybrid query) and
each selectivity (none, 50%, 10%, 1%) the first N SciFact test queries run through the search pipeline (BM25 + k-NN
recall 100 each, RRF, no re-rank, k=10); the table gives p50 / p95 of the whole search and the mean number of hits
(a filter applied inside recall fills k=10 at every selectivity), and, for contrast, how many of 10 a post-filter of
the unfiltered top 100 would have kept. Writes bench/results/filter.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.backends import open_backend  # noqa: E402
from ceindex.config import BuildConfig, OpenSearchConfig, SearchConfig, Settings  # noqa: E402
from ceindex.evaluation.topics import load_topics  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from indexer.build import build_index  # noqa: E402
from search_pipeline import SearchPipeline  # noqa: E402

SELECTIVITY = (None, 50, 10, 1)  # percent of the corpus a filter keeps (None: no filter)
K, RECALL_N = 10, 100


def bucket(doc_id: str) -> int:
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100


def planted_corpus(folder: Path) -> tuple[Path, dict[str, int]]:
    """SciFact's corpus with a ``bucket`` field planted from each doc id."""
    buckets: dict[str, int] = {}
    path = folder / "corpus.jsonl"
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as src, open(path, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            buckets[row["_id"]] = row["bucket"] = bucket(row["_id"])
            out.write(json.dumps(row) + "\n")
    return path, buckets


def measure(pipeline: SearchPipeline, queries: list[str], filters: dict[Any, Any]) -> dict[Any, dict[str, Any]]:
    """Latency and hits per filter; each query runs under every filter in turn, so all cells share the machine's
    load of the moment (the machine is shared; absolute numbers drift, the ratios hold better)."""
    for filter in filters.values():
        pipeline.search(queries[0], k=K, filter=filter)  # warm-up
    totals: dict[Any, list[float]] = {key: [] for key in filters}
    hits: dict[Any, list[int]] = {key: [] for key in filters}
    for query in queries:
        for key, filter in filters.items():
            begin = time.perf_counter()
            result = pipeline.search(query, k=K, filter=filter)
            totals[key].append((time.perf_counter() - begin) * 1000)
            hits[key].append(len(result.hits))
    return {key: {"p50_ms": float(np.percentile(totals[key], 50)), "p95_ms": float(np.percentile(totals[key], 95)),
                  "mean_hits": float(np.mean(hits[key]))} for key in filters}


class CachedEncoder:
    """The encoder with its document vectors remembered, so the second backend's build does not encode again."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encoder.encode(missing)))
        return np.stack([self._cache[t] for t in texts]) if texts else self._encoder.encode(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def post_filter_hits(pipeline: SearchPipeline, queries: list[str], buckets: dict[str, int], percent: int) -> float:
    """How many of k a filter applied AFTER an unfiltered top-100 recall would keep (the starvation it avoids)."""
    kept = []
    for result in pipeline.search_many(queries, k=RECALL_N, include_text=False):
        kept.append(min(K, sum(1 for h in result.hits if buckets[h.id] < percent)))
    return float(np.mean(kept))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=40, help="first N SciFact test queries")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--opensearch", default=None, help="an OpenSearch URL (default: start the test node)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    import torch

    torch.set_num_threads(2)
    queries = list(load_topics(SCIFACT, "test").queries.values())[: args.queries]
    encoder_config = EncoderConfig(model=str(FIXTURE_CE), layer=args.layer)
    encoder = load_encoder(encoder_config)
    documents = CachedEncoder(encoder)
    node, url = None, args.opensearch
    if url is None:
        from ceindex.testing.opensearch_node import OpenSearchNode

        node = OpenSearchNode()
        url = node.start()
    rows, payload = [], {"queries": args.queries, "layer": args.layer, "k": K, "recall_n": RECALL_N, "cells": []}
    try:
        with tempfile.TemporaryDirectory() as home:
            corpus, buckets = planted_corpus(Path(home))
            for name, opensearch in (("embedded", OpenSearchConfig()), ("opensearch", OpenSearchConfig(url=url))):
                settings = Settings(index="bench-filter", home=home, opensearch=opensearch, encoder=encoder_config,
                                    build=BuildConfig(fields={"bucket": "integer"}),
                                    search=SearchConfig(recall_n=RECALL_N, rerank=False))
                backend = open_backend(settings)
                build_index(backend, documents, corpus, settings.index, settings.build,
                            rejects_path=Path(home) / "r.jsonl", progress=False)
                pipeline = SearchPipeline(settings, backend, query_encoder=encoder)
                fusion = "server-side hybrid query" if pipeline.uses_server_fusion else "client-side fusion"
                filters = {p: None if p is None else {"range": {"bucket": {"lt": p}}} for p in SELECTIVITY}
                cells = measure(pipeline, queries, filters)
                for percent in SELECTIVITY:
                    cell = cells[percent]
                    post = None if percent is None else post_filter_hits(pipeline, queries, buckets, percent)
                    cell |= {"backend": name, "fusion": fusion, "selectivity_pct": percent, "post_filter_hits": post}
                    payload["cells"].append(cell)
                    rows.append([name, "none" if percent is None else f"{percent}%", f"{cell['p50_ms']:.1f}",
                                 f"{cell['p95_ms']:.1f}", f"{cell['mean_hits']:.1f}",
                                 "-" if post is None else f"{post:.1f}"])
                backend.close()
    finally:
        if node is not None:
            node.stop()
    print(f"\nSciFact (5,183 docs), first {args.queries} test queries, hybrid BM25 + CE layer {args.layer} k-NN "
          f"(recall {RECALL_N} each, RRF), no re-rank, k={K}; search ms p50 / p95 (2 CPU threads)")
    print(markdown_table(["backend", "filter keeps", "p50 ms", "p95 ms", f"hits of {K}", "post-filter hits"], rows))
    print(f"wrote {write_json('filter.json', payload)}")


if __name__ == "__main__":
    main()
