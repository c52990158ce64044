"""What the BM25 analyzer does to SciFact on Elasticsearch: the same 5,183 documents indexed with each analyzer the
Elasticsearch backend can pick (``ceindex_english`` = Lucene's EnglishAnalyzer, the plain ``standard`` with
English stop words it falls back to), BM25 nDCG@10 / R@100 for the 300 test queries (ranx). Vectors are random
(BM25 does not read them), so nothing is encoded.

    .venv/bin/python bench/es_analyzer_bench.py [--cluster URL]

Without --cluster it starts the Elasticsearch test node. Writes bench/results/es_analyzer.json.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.backends.base import BuildState, IndexSettings  # noqa: E402
from ceindex.backends.elasticsearch import ElasticsearchBackend  # noqa: E402
from ceindex.config import OpenSearchConfig  # noqa: E402
from ceindex.data.beir import read_qrels, read_queries  # noqa: E402
from ceindex.data.corpus import Document, corpus_path, read_documents  # noqa: E402
from ceindex.models.base import EncoderDescription  # noqa: E402

ANALYZERS = ("ceindex_english", "standard")
DIMS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default=None, help="use this Elasticsearch instead of starting the test node")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    from ranx import Qrels, Run, evaluate

    docs = [d for d in read_documents(corpus_path(SCIFACT, None)) if isinstance(d, Document)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(docs), DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    judged, queries = read_qrels(SCIFACT, "test"), read_queries(SCIFACT)
    qids = [q for q in judged if q in queries]
    qrels = Qrels({q: {d: int(r) for d, r in judged[q].items()} for q in qids})
    encoder = EncoderDescription(kind="random", model="none", weights_sha256="-", dims=DIMS)

    node = None
    url = args.cluster
    if url is None:
        from ceindex.testing.elasticsearch_node import ElasticsearchNode

        node = ElasticsearchNode()
        url = node.start()
    rows, results = [], {}
    try:
        for analyzer in ANALYZERS:
            backend = ElasticsearchBackend(OpenSearchConfig(url=url, timeout=120))
            backend.text_analyzer = lambda analyzer=analyzer: analyzer  # type: ignore[method-assign]
            state = BuildState(physical=f"anbench-{analyzer.replace('_', '-')}", alias="anbench", encoder=encoder,
                               corpus_fingerprint="bench")
            backend.client.indices.delete(index=state.physical, ignore_unavailable=True)
            backend.create(state, IndexSettings())
            for start in range(0, len(docs), 500):
                assert not backend.write(state, docs[start:start + 500], vectors[start:start + 500])
            backend.seal(state, IndexSettings())
            hits = backend.bm25(state.physical, [queries[q] for q in qids], 100)
            run = Run({q: {h.id: h.score for h in found} for q, found in zip(qids, hits)})
            scores = evaluate(qrels, run, ["ndcg@10", "recall@100"])
            results[analyzer] = {k: float(v) for k, v in scores.items()}
            rows.append([analyzer, round(float(scores["ndcg@10"]), 3), round(float(scores["recall@100"]), 3)])
            backend.client.indices.delete(index=state.physical)
            backend.close()
    finally:
        if node is not None:
            node.stop()
    print(markdown_table(["BM25 analyzer", "nDCG@10", "R@100"], rows))
    print(f"written {write_json('es_analyzer.json', {'results': results})}")


if __name__ == "__main__":
    main()
