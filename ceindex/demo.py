"""``python -m ceindex.demo`` (``make demo``): build, search and evaluate the packaged sample corpus end to end
on the embedded backend. Models: $CEINDEX_CE_MODEL or the default hub id."""
from __future__ import annotations

import logging
import sys
import tempfile
import textwrap
from pathlib import Path

from ceindex.config import Settings
from ceindex.errors import CeindexError

SAMPLE = Path(__file__).resolve().parent / "samples" / "tiny-science"
QUERY = "how do plants make sugar from sunlight"


def run_demo(home: Path, layer: int = 1) -> int:
    from ceindex.backends import open_backend
    from ceindex.data.corpus import corpus_path
    from ceindex.evaluation.pipeline_eval import EvalRequest, evaluate
    from ceindex.models import EncoderConfig, load_encoder
    from indexer.build import build_index
    from search_pipeline import SearchPipeline

    settings = Settings(index="tiny-science", home=str(home), encoder=EncoderConfig(layer=layer))
    print(f"1/3 build: {SAMPLE.name} (30 documents) -> embedded index under {home}")
    print(f"    encoder: cross-encoder {settings.encoder.resolved_model}, layer {layer}, text paired with itself")
    backend = open_backend(settings)
    try:
        summary = build_index(backend, load_encoder(settings.encoder), corpus_path(SAMPLE, None), settings.index,
                              settings.build, rejects_path=home / "rejects.jsonl", prune=True)
    finally:
        backend.close()
    print(f"    indexed {summary.indexed} documents in {summary.seconds:.1f}s; count check "
          f"{'ok' if summary.count_ok else 'FAILED'}")

    print(f"\n2/3 search: {QUERY!r} (BM25 + k-NN, RRF fusion, cross-encoder re-rank)")
    pipeline = SearchPipeline(settings)
    try:
        for hit in pipeline.search(QUERY, k=3).hits:
            print(f"    {hit.rank}. [{hit.id}] {hit.title}: {textwrap.shorten(hit.text, 70)}  "
                  f"(re-rank {hit.rerank_score:.2f}, bm25 rank {hit.bm25_rank or '-'}, knn rank {hit.knn_rank or '-'})")
    finally:
        pipeline.close()

    print("\n3/3 evaluate: ranx against the sample's judgements")
    report, _ = evaluate(settings, EvalRequest(data_dir=SAMPLE, systems="bm25,knn,hybrid-rrf,hybrid-rrf+rerank",
                                               progress=False, command="python -m ceindex.demo"), None)
    print(textwrap.indent(report.markdown(), "    "))
    print("\n    Next: `ceindex layers` picks the best layer, `ceindex distill` builds a DE-2 CE; see README.")
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with tempfile.TemporaryDirectory(prefix="ceindex-demo-") as tmp:
            sys.exit(run_demo(Path(tmp)))
    except CeindexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
