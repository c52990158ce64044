"""Build benchmark: SciFact's 5,183 documents into the real OpenSearch node and into the embedded default.

Prints a table (seconds split into read / encode / write, docs/s) and writes bench/results/build.json.
    .venv/bin/python bench/build_bench.py [--layer 1] [--opensearch URL]
Without --opensearch it starts the same OpenSearch 2.19 test node the integration tests use.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--opensearch", default=None, help="use this cluster instead of starting the test node")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    import torch

    torch.set_num_threads(2)
    encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=args.layer, max_length=args.max_length))
    node = None
    url = args.opensearch
    if url is None:
        from ceindex.testing.opensearch_node import OpenSearchNode

        node = OpenSearchNode()
        url = node.start()
    rows, results = [], {}
    try:
        with tempfile.TemporaryDirectory() as home:
            for backend_name, opensearch in (("opensearch", OpenSearchConfig(url=url)), ("embedded", OpenSearchConfig())):
                settings = Settings(index="bench-scifact", home=home, opensearch=opensearch)
                backend = open_backend(settings)
                try:
                    summary = build_index(backend, encoder, corpus_path(SCIFACT, None), settings.index, settings.build,
                                          rejects_path=Path(home) / "rejects.jsonl", prune=True)
                finally:
                    backend.close()
                results[backend_name] = summary.to_dict()
                rows.append([backend_name, summary.indexed, round(summary.seconds, 1), round(summary.read_s, 1),
                             round(summary.encode_s, 1), round(summary.write_s, 1), round(summary.docs_per_s, 1)])
    finally:
        if node is not None:
            node.stop()
    print(f"\nSciFact corpus, CE layer {args.layer} encoder (fixture CE, self-pair, max_length {args.max_length}), 2 CPU threads")
    print(markdown_table(["backend", "docs", "total s", "read s", "encode s", "write s*", "docs/s"], rows))
    print("* write overlaps encoding (the next batch encodes while the previous one is written)")
    path = write_json("build.json", {"layer": args.layer, "max_length": args.max_length, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
