"""hnsw vs int8_hnsw on Elasticsearch: SciFact's 5,183 documents encoded ONCE (fixture CE, --layer), written into
two indexes of the real Elasticsearch 8.19 test node that differ only in dense_vector index_options.type; then k-NN
for the 300 test queries on each: nDCG@10 (ranx), recall@100 against exact cosine (numpy), per-query latency
(p50/p95 of one msearch per query) and the index's store size.

    .venv/bin/python bench/es_vector_bench.py [--layer 0] [--cluster URL]

Without --cluster it starts the test node. Writes bench/results/es_vector.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.backends.base import BuildState, IndexSettings  # noqa: E402
from ceindex.backends.elasticsearch import ElasticsearchBackend  # noqa: E402
from ceindex.config import OpenSearchConfig  # noqa: E402
from ceindex.data.beir import read_qrels, read_queries  # noqa: E402
from ceindex.data.corpus import Document, body_text, corpus_path, read_documents  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from mappings.elasticsearch import VECTOR_INDEX_TYPES  # noqa: E402


def _write(backend: ElasticsearchBackend, state: BuildState, docs: list, vectors: np.ndarray) -> float:
    began = time.perf_counter()
    backend.create(state, IndexSettings())
    for start in range(0, len(docs), 500):
        assert not backend.write(state, docs[start:start + 500], vectors[start:start + 500])
    backend.seal(state, IndexSettings())
    backend.client.options(request_timeout=600).indices.forcemerge(index=state.physical, max_num_segments=1)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--cluster", default=None, help="use this Elasticsearch instead of starting the test node")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--ef-search", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    from ranx import Qrels, Run, evaluate

    encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=args.layer, max_length=256))
    docs = [d for d in read_documents(corpus_path(SCIFACT, None)) if isinstance(d, Document)]
    vectors = encoder.encode([body_text(d.title, d.text) for d in docs])
    judged, queries = read_qrels(SCIFACT, "test"), read_queries(SCIFACT)
    qids = [q for q in judged if q in queries]
    qvecs = encoder.encode([queries[q] for q in qids])  # queries are encoded like documents (as the pipeline does)
    exact = np.argsort(-(qvecs @ vectors.T), axis=1)[:, :args.n]
    qrels = Qrels({q: {d: int(r) for d, r in judged[q].items()} for q in qids})

    node = None
    url = args.cluster
    if url is None:
        from ceindex.testing.elasticsearch_node import ElasticsearchNode

        node = ElasticsearchNode(heap="1g")
        url = node.start()
    rows, results = [], {}
    try:
        for kind in VECTOR_INDEX_TYPES:
            backend = ElasticsearchBackend(OpenSearchConfig(url=url, timeout=120), vector_index=kind)
            state = BuildState(physical=f"vecbench-{kind.replace('_', '-')}", alias="vecbench",
                               encoder=encoder.describe(), corpus_fingerprint="bench")
            backend.client.indices.delete(index=state.physical, ignore_unavailable=True)
            build_s = _write(backend, state, docs, vectors)
            latencies, run = [], {}
            for qid, qvec in zip(qids, qvecs):
                began = time.perf_counter()
                hits = backend.knn(state.physical, qvec[None, :], args.n, args.ef_search)[0]
                latencies.append((time.perf_counter() - began) * 1000)
                run[qid] = {h.id: h.score for h in hits}
            ids = [d.id for d in docs]
            recall = statistics.mean(len({ids[i] for i in row} & set(run[q])) / args.n for q, row in zip(qids, exact))
            ndcg = float(evaluate(qrels, Run(run), "ndcg@10"))
            stats = backend.client.indices.stats(index=state.physical, metric="store")
            size_mb = stats["indices"][state.physical]["total"]["store"]["size_in_bytes"] / 1e6
            p50, p95 = float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95))
            results[kind] = {"ndcg@10": ndcg, "recall@100_vs_exact": recall, "p50_ms": p50, "p95_ms": p95,
                             "store_mb": size_mb, "build_s": build_s}
            rows.append([kind, round(ndcg, 3), round(recall, 3), round(p50, 1), round(p95, 1), round(size_mb, 1),
                         round(build_s, 1)])
            backend.client.indices.delete(index=state.physical)
            backend.close()
    finally:
        if node is not None:
            node.stop()
    print(markdown_table(["index_options.type", "nDCG@10", "recall@100 vs exact", "p50 ms", "p95 ms", "store MB",
                          "write+merge s"], rows))
    path = write_json("es_vector.json", {"layer": args.layer, "n": args.n, "ef_search": args.ef_search,
                                         "results": results})
    print(f"written {path}")


if __name__ == "__main__":
    main()
