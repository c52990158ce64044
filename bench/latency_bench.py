"""Per-stage search latency over SciFact test queries, on the real OpenSearch node and the embedded backend,
plus the effect of the re-ranker's batch size, max length and dtype.

    .venv/bin/python bench/latency_bench.py [--queries 100] [--layer 1] [--opensearch URL]

Prints p50/p95 per stage (encode query, BM25, k-NN, fusion, fetch, re-rank) and writes bench/results/latency.json.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.backends import open_backend  # noqa: E402
from ceindex.config import OpenSearchConfig, SearchConfig, Settings  # noqa: E402
from ceindex.data.corpus import corpus_path  # noqa: E402
from ceindex.evaluation.topics import load_topics  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from indexer.build import build_index  # noqa: E402
from search_pipeline import STAGES, SearchPipeline  # noqa: E402


def percentiles(values: list[float]) -> str:
    return f"{np.percentile(values, 50):.1f} / {np.percentile(values, 95):.1f}"


def measure(pipeline: SearchPipeline, queries: list[str]) -> dict[str, list[float]]:
    pipeline.search(queries[0])  # warm-up: lazy model loading, caches
    out: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for query in queries:
        begin = time.perf_counter()
        result = pipeline.search(query, k=10)
        out["total"].append((time.perf_counter() - begin) * 1000)
        for stage in STAGES:
            out[stage].append(result.timings_ms[stage])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100, help="first N SciFact test queries")
    parser.add_argument("--rerank-queries", type=int, default=30, help="queries per re-ranker variant")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--rerank-max-length", type=int, default=256,
                        help="pair length of the per-stage rows (0 = the CE's own training length)")
    parser.add_argument("--opensearch", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    import torch

    torch.set_num_threads(2)
    queries = list(load_topics(SCIFACT, "test").queries.values())
    encoder_config = EncoderConfig(model=str(FIXTURE_CE), layer=args.layer)
    encoder = load_encoder(encoder_config)
    node = None
    url = args.opensearch
    if url is None:
        from ceindex.testing.opensearch_node import OpenSearchNode

        node = OpenSearchNode()
        url = node.start()
    stage_rows, variant_rows, payload = [], [], {"queries": args.queries, "layer": args.layer, "stages": {}, "rerank": []}
    try:
        with tempfile.TemporaryDirectory() as home:
            for name, opensearch in (("opensearch", OpenSearchConfig(url=url)), ("embedded", OpenSearchConfig())):
                # 256 tokens: what the README's table was measured at (the default is now the CE's training length)
                settings = Settings(index="bench-latency", home=home, opensearch=opensearch, encoder=encoder_config,
                                    search=SearchConfig(rerank_max_length=args.rerank_max_length or None))
                backend = open_backend(settings)
                build_index(backend, encoder, corpus_path(SCIFACT, None), settings.index, settings.build,
                            rejects_path=Path(home) / "r.jsonl", progress=False)
                pipeline = SearchPipeline(settings, backend, query_encoder=encoder)
                timings = measure(pipeline, queries[: args.queries])
                payload["stages"][name] = {s: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                                           for s, v in timings.items()}
                stage_rows.append([name, *(percentiles(timings[s]) for s in (*STAGES, "total"))])
                if name == "embedded":
                    variants = [(32, 256, "float32"), (8, 256, "float32"), (64, 256, "float32"),
                                (32, 128, "float32"), (32, 512, "float32"), (32, 256, "int8"), (32, 256, "bfloat16")]
                    for batch, length, dtype in variants:
                        variant = SearchPipeline(replace(settings, search=SearchConfig(
                            rerank_batch_size=batch, rerank_max_length=length, rerank_dtype=dtype)), backend,
                            query_encoder=encoder)
                        rerank = measure(variant, queries[: args.rerank_queries])["rerank"]
                        variant_rows.append([batch, length, dtype, percentiles(rerank)])
                        payload["rerank"].append({"batch_size": batch, "max_length": length, "dtype": dtype,
                                                  "p50": float(np.percentile(rerank, 50)), "p95": float(np.percentile(rerank, 95))})
                backend.close()
    finally:
        if node is not None:
            node.stop()
    print(f"\nSciFact test, first {args.queries} queries, k=10, recall 100+100, RRF, re-rank top 50 (fixture CE), "
          "2 CPU threads; ms p50 / p95")
    print(markdown_table(["backend", *STAGES, "total"], stage_rows))
    print(f"\nRe-rank stage (top 50) by re-ranker settings, embedded backend, first {args.rerank_queries} queries; ms p50 / p95")
    print(markdown_table(["batch size", "max length", "dtype", "re-rank ms"], variant_rows))
    print(f"wrote {write_json('latency.json', payload)}")


if __name__ == "__main__":
    main()
