"""Build benchmark: SciFact's 5,183 documents into each engine: the embedded default and the real OpenSearch 2.19,
OpenSearch 3.5 and Elasticsearch 8.19 test nodes (each node started for its build and stopped after it, so they
never share the CPU).

Prints a table (seconds split into read / encode / write, docs/s) and writes bench/results/build.json.
    .venv/bin/python bench/build_bench.py [--layer 1] [--engines embedded,opensearch,opensearch3,elasticsearch]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.backends import open_backend  # noqa: E402
from ceindex.config import OpenSearchConfig, Settings  # noqa: E402
from ceindex.data.corpus import corpus_path  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from indexer.build import build_index  # noqa: E402


ENGINES = {
    "embedded": "embedded (SQLite + bm25s + numpy)",
    "opensearch": "OpenSearch 2.19 test node (lucene HNSW m 16, ef_construction 128)",
    "opensearch3": "OpenSearch 3.5 test node (lucene HNSW m 16, ef_construction 128)",
    "elasticsearch": "Elasticsearch 8.19 test node (dense_vector hnsw m 16, ef_construction 128)",
}


def _node(engine: str):
    """The test node an engine's build runs on (None: the embedded store)."""
    if engine == "embedded":
        return None
    from ceindex.testing.elasticsearch_node import ElasticsearchNode
    from ceindex.testing.opensearch_node import OpenSearch3Node, OpenSearchNode

    return {"opensearch": OpenSearchNode, "opensearch3": OpenSearch3Node, "elasticsearch": ElasticsearchNode}[engine]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ", ".join(ENGINES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    import torch

    torch.set_num_threads(2)
    encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=args.layer, max_length=args.max_length))
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as home:
        for engine in args.engines.split(","):
            node = _node(engine)
            try:
                url = node.start() if node is not None else None
                settings = Settings(index="bench-scifact", home=home, opensearch=OpenSearchConfig(url=url))
                backend = open_backend(settings)
                try:
                    summary = build_index(backend, encoder, corpus_path(SCIFACT, None), settings.index, settings.build,
                                          rejects_path=Path(home) / "rejects.jsonl", prune=True)
                finally:
                    backend.close()
            finally:
                if node is not None:
                    node.stop()
            results[engine] = summary.to_dict()
            rows.append([ENGINES[engine], summary.indexed, round(summary.seconds, 1), round(summary.read_s, 1),
                         round(summary.encode_s, 1), round(summary.write_s, 1), round(summary.docs_per_s, 1)])
    print(f"\nSciFact corpus, CE layer {args.layer} encoder (fixture CE, self-pair, max_length {args.max_length}), 2 CPU threads")
    print(markdown_table(["backend", "docs", "total s", "read s", "encode s", "write s*", "docs/s"], rows))
    print("* write overlaps encoding (the next batch encodes while the previous one is written)")
    path = write_json("build.json", {"layer": args.layer, "max_length": args.max_length, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
