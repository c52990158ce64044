"""How much of the machine the re-ranker and the early-layer encoder use: GFLOP per pair/text, achieved GFLOPS and
% of the fp32 GEMM peak measured in the same run, by batch size.

    .venv/bin/python bench/utilisation.py [--pairs 200] [--texts 300] [--batch-sizes 8,16,32,64] [--threads 2]

Peak: the best of torch.mm on square fp32 matrices (1024-4096) with the same thread count. Work is counted
analytically for a BERT layer stack (QKV, output and FFN projections: 2*(4h^2 + 2*h*ffn) FLOP per token; attention
scores and mixing: 4*T^2*h FLOP per sequence), from the padded batch shapes the code really runs ("executed") and
from each input's own length ("useful": padding excluded). Pairs are SciFact test queries with their BM25 top
candidates at max length 256; texts are SciFact abstracts. Writes bench/results/utilisation.json.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, SCIFACT, bm25_run, markdown_table, require, write_json  # noqa: E402

from ceindex.data.corpus import Document, corpus_path, read_documents  # noqa: E402
from ceindex.evaluation.topics import load_topics  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from ceindex.models.runtime import length_sorted_batches  # noqa: E402
from ceindex.models.scorer import CrossEncoderReranker  # noqa: E402


def gemm_peak(threads: int, repeats: int = 5) -> float:
    """Best fp32 GFLOPS of torch.mm on this machine with ``threads`` threads."""
    import torch

    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        for _ in range(repeats):
            begin = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - begin) / 1e9)
    return best


def layer_flops(tokens: int, hidden: int, ffn: int) -> float:
    """FLOP of one BERT layer over one sequence of ``tokens`` tokens."""
    return 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4.0 * tokens * tokens * hidden


def batch_work(lengths: Sequence[int], batch_size: int, layers: int, hidden: int, ffn: int) -> tuple[float, float]:
    """(executed, useful) FLOP for inputs of ``lengths`` tokens batched as the code batches them."""
    executed = useful = 0.0
    for batch in length_sorted_batches(lengths, batch_size):
        padded = max(lengths[i] for i in batch)
        executed += len(batch) * layers * layer_flops(padded, hidden, ffn)
        useful += sum(layers * layer_flops(lengths[i], hidden, ffn) for i in batch)
    return executed, useful


def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - begin)
    return statistics.median(seconds)


def scifact_pairs(n: int, per_query: int) -> tuple[list[tuple[str, str]], list[str]]:
    topics = load_topics(SCIFACT, "test")
    docs = [d for d in read_documents(corpus_path(SCIFACT, None)) if isinstance(d, Document)]
    qids = list(topics.queries)[: max(1, n // per_query)]
    run = bm25_run([d.id for d in docs], [d.body for d in docs], qids, [topics.queries[q] for q in qids], k=per_query)
    body = {d.id: d.body for d in docs}
    pairs = [(topics.queries[q], body[d]) for q in qids for d in run[q]][:n]
    return pairs, [d.body for d in docs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    import torch

    torch.set_num_threads(args.threads)
    peak = gemm_peak(args.threads)
    pairs, corpus = scifact_pairs(args.pairs, per_query=20)
    texts = corpus[: args.texts]
    rows, payload = [], {"threads": args.threads, "gemm_peak_gflops": peak, "rows": []}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        reranker = CrossEncoderReranker(str(FIXTURE_CE), batch_size=batch_size, max_length=256, device="cpu")
        config = reranker.model.config
        ids = {t: len(i) for t, i in zip(*_token_counts(reranker.tokenizer, pairs))}
        lengths = [min(ids[q] + ids[d] + 3, reranker.max_length) for q, d in pairs]
        executed, useful = batch_work(lengths, batch_size, config.num_hidden_layers, config.hidden_size,
                                      config.intermediate_size)
        seconds = timed(lambda: reranker.score(pairs), args.repeats)
        rows.append(_row("CE re-rank, full depth (pairs)", batch_size, len(pairs), seconds, executed, useful, peak))
        encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=1, max_length=256, batch_size=batch_size,
                                             device="cpu"))
        tokens = [len(i) for i in reranker.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
        lengths = [min(2 * n + 3, 256) for n in tokens]
        executed, useful = batch_work(lengths, batch_size, 1, config.hidden_size, config.intermediate_size)
        seconds = timed(lambda: encoder.encode(texts), args.repeats)
        rows.append(_row("CE layer 1, self-pair (texts)", batch_size, len(texts), seconds, executed, useful, peak))
    payload["rows"] = rows
    print(f"\nfp32 GEMM peak (torch.mm, {args.threads} threads): {peak:.1f} GFLOPS")
    print(markdown_table(
        ["model", "batch", "items/s", "GFLOP/item executed", "GFLOP/item useful", "GFLOPS executed", "% of peak",
         "% of peak (useful)"],
        [[r["model"], r["batch_size"], f"{r['items_per_s']:.1f}", f"{r['gflop_per_item_executed']:.2f}",
          f"{r['gflop_per_item_useful']:.2f}", f"{r['gflops_executed']:.1f}", f"{r['pct_peak_executed']:.0f}%",
          f"{r['pct_peak_useful']:.0f}%"] for r in rows]))
    print(f"wrote {write_json('utilisation.json', payload)}")


def _token_counts(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[list[int]]]:
    distinct = list(dict.fromkeys(t for pair in pairs for t in pair))
    return distinct, tokenizer(distinct, add_special_tokens=False, verbose=False)["input_ids"]


def _row(model: str, batch_size: int, items: int, seconds: float, executed: float, useful: float, peak: float) -> dict:
    return {"model": model, "batch_size": batch_size, "items": items, "seconds": seconds,
            "items_per_s": items / seconds, "gflop_per_item_executed": executed / items / 1e9,
            "gflop_per_item_useful": useful / items / 1e9, "gflops_executed": executed / seconds / 1e9,
            "pct_peak_executed": 100 * executed / seconds / 1e9 / peak, "pct_peak_useful": 100 * useful / seconds / 1e9 / peak}


if __name__ == "__main__":
    main()
