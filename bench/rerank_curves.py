"""How deep and how long to re-rank: nDCG@10 and CE time per query by re-rank depth and pair max length.

For each max length, the fixture cross-encoder scores each query's BM25 top ``max(depths)`` once; a depth d keeps
the first d candidates re-ranked and the rest in BM25 order, so every (depth, length) cell of one dataset comes
from the same scores. ms / query = d x the seconds per pair at that length, timed on the same sample of pairs
with the lengths interleaved round by round (median of the rounds; 2 torch threads, batch 32, length-sorted
batches), so the ratios between lengths hold even when the machine's load changes. † = nDCG@10 differs from the default cell (the CE's training length read from its files,
``search.rerank_top`` = 50) by a paired t-test (p < 0.05, ranx).

    .venv/bin/python bench/rerank_curves.py [--depths 10,20,50,100] [--lengths 128,192,256,512] \
        [--scifact-queries 60] [--dl19-queries 43]

Scores are cached on disk per (weights sha256, dtype, length, query, document) under the ceindex home, so an
interrupted run continues where it stopped.
Writes bench/results/rerank_curves.json.
"""
from __future__ import annotations

import argparse
import statistics
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DL19, FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402
from rerank_bench import dataset  # noqa: E402

from ceindex.config import SearchConfig, Settings  # noqa: E402
from ceindex.distill.cache import ScoreStore, text_key  # noqa: E402
from ceindex.evaluation.report import score_runs  # noqa: E402
from ceindex.evaluation.runner import SystemRun  # noqa: E402
from ceindex.models.runtime import weights_sha256  # noqa: E402
from ceindex.models.scorer import CrossEncoderReranker  # noqa: E402
from search_pipeline.rerank import reranked_order  # noqa: E402

log = logging.getLogger("rerank_curves")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE)
    parser.add_argument("--depths", default="10,20,50,100")
    parser.add_argument("--lengths", default="128,192,256,512")
    parser.add_argument("--scifact-queries", type=int, default=60, help="first N SciFact test queries (of 300)")
    parser.add_argument("--dl19-queries", type=int, default=43, help="first N DL19 queries (of 43)")
    parser.add_argument("--datasets", default="dl19,scifact")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timing-pairs", type=int, default=96, help="pairs (spread over the queries) timed per length")
    parser.add_argument("--timing-rounds", type=int, default=3, help="timing rounds, lengths interleaved; median")
    parser.add_argument("--out", default="rerank_curves.json")
    return parser.parse_args()


class CachedScorer:
    """One max length's CE scores of (query, document) pairs, cached on disk (scores do not depend on load)."""

    def __init__(self, ce: Path, length: int, batch_size: int, cache_dir: Path) -> None:
        self.reranker = CrossEncoderReranker(str(ce), batch_size=batch_size, max_length=length, device="cpu")
        name = f"bench-rerank-{weights_sha256(ce)[:16]}-{self.reranker.model.dtype}-{self.reranker.max_length}"
        self.store = ScoreStore(cache_dir, name)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.store.get_or_compute([text_key(q, d) for q, d in pairs],
                                         lambda missing: self.reranker.score([pairs[i] for i in missing])).tolist()


def seconds_per_pair(scorers: dict[int, CachedScorer], sample: list[tuple[str, str]], rounds: int) -> dict[int, float]:
    """Median seconds per pair of each length on the same ``sample``, the lengths interleaved round by round so a
    change of the machine's load hits them all alike."""
    times: dict[int, list[float]] = {n: [] for n in scorers}
    for scorer in scorers.values():
        scorer.reranker.score(sample[:8])  # warm-up: first-call allocations
    for _ in range(rounds):
        for length, scorer in scorers.items():
            begin = time.perf_counter()
            scorer.reranker.score(sample)
            times[length].append((time.perf_counter() - begin) / len(sample))
    return {n: statistics.median(t) for n, t in times.items()}


def depth_run(candidates: dict[str, list[str]], scores: dict[str, dict[str, float]], depth: int) -> dict:
    """Each query's ranking when its first ``depth`` candidates are re-ranked and the rest keep BM25 order."""
    run = {}
    for qid, ids in candidates.items():
        ranked = reranked_order(ids[:depth], {d: scores[qid][d] for d in ids[:depth]}) + ids[depth:]
        run[qid] = {d: float(len(ranked) - i) for i, d in enumerate(ranked)}
    return run


def curves_for(name: str, data: Path, queries: int, depths: list[int], scorers: dict[int, CachedScorer],
               default_cell: str, timing_pairs: int, rounds: int) -> dict[str, Any]:
    topics, candidates, texts = dataset(name, data, max(depths))
    candidates = dict(list(candidates.items())[:queries])
    runs = [SystemRun("BM25", depth_run(candidates, {q: {} for q in candidates}, 0))]
    pairs = [(topics.queries[q], texts[d]) for q, ids in candidates.items() for d in ids if d in texts]
    per_pair = seconds_per_pair(scorers, pairs[:: max(1, len(pairs) // timing_pairs)][:timing_pairs], rounds)
    ms_per_query: dict[str, float] = {}
    for length, scorer in scorers.items():
        log.info("%s: scoring %d pairs at %d tokens", name, len(pairs), scorer.reranker.max_length)
        flat = iter(scorer.score(pairs))
        scores = {q: {d: next(flat) for d in ids if d in texts} for q, ids in candidates.items()}
        for depth in depths:
            label = cell_name(depth, scorer.reranker.max_length)
            runs.append(SystemRun(label, depth_run(candidates, scores, depth)))
            ms_per_query[label] = depth * per_pair[length] * 1000
    baseline = default_cell if default_cell in {r.name for r in runs} else runs[1].name  # of the t-tests
    report = score_runs({q: topics.qrels.get(q, {}) for q in candidates}, runs, baseline=baseline)
    return {"queries": len(candidates), "report": report, "ms_per_query": ms_per_query,
            "seconds_per_pair": per_pair}


def cell_name(depth: int, length: int) -> str:
    return f"depth {depth}, {length} tokens" if depth else "BM25"


def table(result: dict[str, Any], depths: list[int], lengths: list[int], default_cell: str) -> str:
    report = result["report"]
    rows = []
    for depth in [0, *depths]:
        for length in lengths if depth else [0]:
            label = cell_name(depth, length)
            if label not in report.scores:
                continue
            mark = "†" if report.significant.get(label, {}).get("ndcg@10") else ""
            ms = result["ms_per_query"].get(label)
            rows.append([f"**{label}** (default)" if label == default_cell else label,
                         f"{report.scores[label]['ndcg@10']:.3f}{mark}", f"{ms:,.0f}" if ms else "–"])
    return markdown_table(["re-rank", "nDCG@10", "CE ms / query"], rows)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "ceindex", "search_pipeline", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(2)
    require(args.ce)
    depths = [int(d) for d in args.depths.split(",")]
    cache_dir = Settings().home_path / "cache" / "bench-rerank"
    scorers = {int(n): CachedScorer(args.ce, int(n), args.batch_size, cache_dir) for n in args.lengths.split(",")}
    default_length = CrossEncoderReranker(str(args.ce), device="cpu").max_length  # the CE's training length
    default_cell = cell_name(SearchConfig().rerank_top, default_length)
    lengths = [s.reranker.max_length for s in scorers.values()]
    sources = {"dl19": (DL19, args.dl19_queries), "scifact": (SCIFACT, args.scifact_queries)}
    payload: dict[str, Any] = {"ce": str(args.ce), "command": " ".join(sys.argv), "torch_threads": 2,
                               "batch_size": args.batch_size, "default": default_cell, "datasets": {}}
    for name in args.datasets.split(","):
        data, queries = sources[name]
        result = curves_for(name, require(data), queries, depths, scorers, default_cell, args.timing_pairs,
                            args.timing_rounds)
        print(f"\n## {name}: {result['queries']} queries, BM25 top {max(depths)} candidates; "
              f"† = nDCG@10 differs from the default ({default_cell})\n")
        print(table(result, depths, lengths, default_cell))
        payload["datasets"][name] = {"queries": result["queries"], "ms_per_query": result["ms_per_query"],
                                     "report": result["report"].to_dict()}
        payload["datasets"][name]["seconds_per_pair"] = result["seconds_per_pair"]
    print(f"\nwrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
