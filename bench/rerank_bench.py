"""Re-ranker settings: what int8 and a shorter max length cost in quality, and what they save in time.

Re-ranks the same BM25 candidates with the fixture cross-encoder under each setting, in one run:
TREC DL 2019 (the shipped BM25 top-100, all 100 re-ranked) and SciFact test (BM25 top-``--scifact-top``).
Each setting is scored with ranx against the default (float32, 256 tokens), paired t-test marked.

    .venv/bin/python bench/rerank_bench.py [--settings float32:256,int8:256,float32:128] [--scifact-top 20]

Prints one table per dataset and writes bench/results/rerank.json. torch runs on 2 threads.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DL19, FIXTURE_CE, SCIFACT, bm25_run, markdown_table, require, write_json  # noqa: E402

from ceindex.data.corpus import Document, corpus_path, read_documents  # noqa: E402
from ceindex.evaluation.report import score_runs  # noqa: E402
from ceindex.evaluation.runner import SystemRun, rerank_only  # noqa: E402
from ceindex.evaluation.topics import load_topics  # noqa: E402
from ceindex.models.scorer import CrossEncoderReranker  # noqa: E402

log = logging.getLogger("rerank_bench")


def candidates_of(run: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    return {q: [d for d, _ in sorted(docs.items(), key=lambda x: -x[1])] for q, docs in run.items()}


def dataset(name: str, data: Path, top: int) -> tuple[Any, dict[str, list[str]], dict[str, str]]:
    """Topics, BM25 candidate lists cut to ``top``, and the texts they need."""
    from ranx import Run

    topics = load_topics(data, "test")
    docs = [d for d in read_documents(corpus_path(data, None)) if isinstance(d, Document)]
    if (data / "bm25-top100.trec").is_file():
        run = Run.from_file(str(data / "bm25-top100.trec"), kind="trec").to_dict()
    else:
        qids = list(topics.queries)
        run = bm25_run([d.id for d in docs], [d.body for d in docs], qids, [topics.queries[q] for q in qids], k=top)
    candidates = {q: ids[:top] for q, ids in candidates_of(run).items() if q in topics.queries}
    wanted = {d for ids in candidates.values() for d in ids}
    texts = {d.id: d.body for d in docs if d.id in wanted}
    log.info("%s: %d queries, %d candidate pairs", name, len(candidates), sum(map(len, candidates.values())))
    return topics, candidates, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE)
    parser.add_argument("--settings", default="float32:256,int8:256,float32:128",
                        help="dtype:max_length pairs; the first is the baseline of the significance test")
    parser.add_argument("--scifact-top", type=int, default=20)
    parser.add_argument("--dl19-top", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--datasets", default="dl19,scifact")
    parser.add_argument("--out", default="rerank.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "ceindex", "search_pipeline", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(2)
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    sources = {"dl19": (DL19, args.dl19_top), "scifact": (SCIFACT, args.scifact_top)}
    payload: dict[str, Any] = {"ce": str(args.ce), "batch_size": args.batch_size, "torch_threads": 2,
                               "command": " ".join(sys.argv), "datasets": {}}
    for name in args.datasets.split(","):
        data, top = sources[name]
        require(data)
        topics, candidates, texts = dataset(name, data, top)
        runs: list[SystemRun] = [SystemRun("BM25", {q: {d: float(len(ids) - i) for i, d in enumerate(ids)}
                                                    for q, ids in candidates.items()})]
        seconds: dict[str, float] = {}
        for dtype, max_length in settings:
            label = f"re-rank {dtype}, {max_length} tokens"
            reranker = CrossEncoderReranker(str(args.ce), batch_size=args.batch_size, max_length=max_length,
                                            dtype=dtype, device="cpu")
            begin = time.perf_counter()
            runs.append(rerank_only(reranker, label, topics.queries, candidates, texts, top=top, depth=top,
                                    progress=False))
            seconds[label] = time.perf_counter() - begin
            log.info("%s %s: %.0f s", name, label, seconds[label])
        baseline = runs[1].name
        report = score_runs(topics.qrels, runs, baseline=baseline)
        pairs = sum(map(len, candidates.values()))
        rows = []
        for run in runs:
            scores = report.scores[run.name]
            per_query = [lat["rerank"] for lat in run.latencies_ms] if run.latencies_ms else []
            marks = {m: "†" if report.significant.get(run.name, {}).get(m) else "" for m in ("ndcg@10", "mrr@10")}
            rows.append([run.name, f"{scores['ndcg@10']:.3f}{marks['ndcg@10']}", f"{scores['mrr@10']:.3f}{marks['mrr@10']}", f"{statistics.median(per_query):.0f}" if per_query else "-",
                         f"{pairs / seconds[run.name]:.1f}" if run.name in seconds else "-",
                         f"{seconds[baseline] / seconds[run.name]:.2f}" if run.name in seconds else "-"])
        print(f"\n## {name}: {len(candidates)} queries, BM25 top {top} re-ranked ({pairs} pairs); "
              f"† = differs from '{baseline}' (paired t-test, p < 0.05)\n")
        print(markdown_table(["candidates", "nDCG@10", "MRR@10", "ms / query p50", "pairs/s", "speed-up"], rows))
        payload["datasets"][name] = {"queries": len(candidates), "top": top, "pairs": pairs,
                                     "seconds": {k: round(v, 1) for k, v in seconds.items()},
                                     "report": report.to_dict()}
    path = write_json(args.out, payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
