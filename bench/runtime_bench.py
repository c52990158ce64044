"""Runtimes and dtypes side by side, in one run: torch, ONNX Runtime and OpenVINO, float32 and int8.

For each runtime:dtype, on the same inputs: re-rank pairs/s (SciFact BM25 pairs at the re-ranker's own max
length), early-layer encoder docs/s (layer 1, self-pair, SciFact abstracts at 256 tokens), achieved GFLOPS and % of
the fp32 GEMM peak measured in the same run (the counting of bench/utilisation.py), and the nDCG@10 change against
torch float32 on SciFact (BM25 top --scifact-top of the first --scifact-queries test queries) and TREC DL 2019 (the
shipped BM25 top-100 cut to --dl19-top, first --dl19-queries queries), paired t-test (ranx, as bench/rerank_bench.py),
plus the mean top-10 overlap with torch float32's re-ranked order.

    flock /tmp/ceindex-bench.lock .venv/bin/python bench/runtime_bench.py \\
        [--configs torch:float32,torch:int8,onnx:float32,onnx:int8,openvino:float32,openvino:int8] \\
        [--pairs 64] [--texts 128] [--rounds 3] [--scifact-queries 20] [--scifact-top 20] [--dl19-queries 5] [--dl19-top 40]

Timing: all configs are loaded first, warmed up once, then timed round-robin for --rounds rounds (each config
once per round, so other processes' load falls on all alike); the best round counts. Writes
bench/results/runtime.json. Exports are cached under $CEINDEX_HOME/cache/exports (the first load of a
runtime:dtype exports, later ones reuse it: "load s" shows both cases).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DL19, FIXTURE_CE, SCIFACT, markdown_table, require, write_json  # noqa: E402
from rerank_bench import dataset  # noqa: E402
from utilisation import _token_counts, batch_work, gemm_peak, scifact_pairs  # noqa: E402

from ceindex.evaluation.report import score_runs  # noqa: E402
from ceindex.evaluation.runner import SystemRun, rerank_only  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from ceindex.models.scorer import CrossEncoderReranker  # noqa: E402

log = logging.getLogger("runtime_bench")
BASELINE = "torch:float32"


def subset(topics: Any, candidates: dict[str, list[str]], n: int) -> tuple[dict, dict, dict]:
    """The first ``n`` queries (by id order in the candidates) with their qrels."""
    qids = [q for q in candidates if q in topics.qrels][:n] if n > 0 else list(candidates)
    return ({q: topics.queries[q] for q in qids}, {q: candidates[q] for q in qids},
            {q: topics.qrels[q] for q in qids if q in topics.qrels})


def top10_overlap(run: SystemRun, reference: SystemRun) -> float:
    def top(scores: dict[str, float]) -> set[str]:
        return set(sorted(scores, key=lambda d: -scores[d])[:10])

    return statistics.mean(len(top(run.run[q]) & top(reference.run[q])) for q in reference.run)


@dataclass
class Contender:
    """One runtime:dtype: its re-ranker and layer-1 encoder, loaded once, and its best timings over the rounds."""

    label: str
    reranker: Any
    encoder: Any
    load_s: float
    rerank_s: list[float] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)


def load(args: argparse.Namespace, label: str) -> Contender:
    runtime, dtype = label.split(":")
    begin = time.perf_counter()
    reranker = CrossEncoderReranker(str(args.ce), batch_size=args.batch_size, dtype=dtype, device="cpu",
                                    runtime=runtime, max_length=args.max_length)
    encoder = load_encoder(EncoderConfig(model=str(args.ce), layer=1, max_length=256, batch_size=args.batch_size,
                                         device="cpu", runtime=runtime, dtype=dtype))
    return Contender(label, reranker, encoder, time.perf_counter() - begin)


def seconds_of(fn: Callable[[], Any]) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_rounds(contenders: list[Contender], pairs: list, texts: list, rounds: int) -> None:
    """Round-robin: every contender once per round, so load from other processes hits them alike; keep the best."""
    for contender in contenders:  # warm-up (first shapes, thread pools)
        contender.reranker.score(pairs)
        contender.encoder.encode(texts)
    for _ in range(rounds):
        for contender in contenders:
            contender.rerank_s.append(seconds_of(lambda: contender.reranker.score(pairs)))
            contender.encode_s.append(seconds_of(lambda: contender.encoder.encode(texts)))


def throughput(contender: Contender, pairs: list, texts: list, peak: float) -> dict:
    reranker = contender.reranker
    config = reranker.model.config
    ids = {t: len(i) for t, i in zip(*_token_counts(reranker.tokenizer, pairs))}
    lengths = [min(ids[q] + ids[d] + 3, reranker.max_length) for q, d in pairs]
    executed, _useful = batch_work(lengths, reranker.batch_size, config.num_hidden_layers, config.hidden_size,
                                   config.intermediate_size)
    tokens = [len(i) for i in reranker.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    enc_exec, _ = batch_work([min(2 * n + 3, 256) for n in tokens], reranker.batch_size, 1, config.hidden_size,
                             config.intermediate_size)
    seconds, enc_seconds = min(contender.rerank_s), min(contender.encode_s)
    return {"load_s": contender.load_s, "max_length": reranker.max_length, "rerank_seconds": contender.rerank_s,
            "encode_seconds": contender.encode_s, "pairs_per_s": len(pairs) / seconds,
            "rerank_gflops": executed / seconds / 1e9, "rerank_pct_peak": 100 * executed / seconds / 1e9 / peak,
            "docs_per_s": len(texts) / enc_seconds, "encode_gflops": enc_exec / enc_seconds / 1e9,
            "encode_pct_peak": 100 * enc_exec / enc_seconds / 1e9 / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE)
    parser.add_argument("--configs", default="torch:float32,torch:int8,onnx:float32,onnx:int8,openvino:float32,"
                                             "openvino:int8", help=f"runtime:dtype list; {BASELINE} is always run first")
    parser.add_argument("--pairs", type=int, default=64, help="pairs timed for pairs/s")
    parser.add_argument("--texts", type=int, default=128, help="abstracts timed for the encoder's docs/s")
    parser.add_argument("--max-length", type=int, default=None, help="re-rank pair length (default: the CE's own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, round-robin over the configs (best kept)")
    parser.add_argument("--scifact-queries", type=int, default=20)
    parser.add_argument("--scifact-top", type=int, default=20)
    parser.add_argument("--dl19-queries", type=int, default=5)
    parser.add_argument("--dl19-top", type=int, default=40)
    parser.add_argument("--out", default="runtime.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for ours in ("runtime_bench", "rerank_bench"):  # ORT's quantizer talks on the root logger at INFO
        logging.getLogger(ours).setLevel(logging.INFO)
    for path in (args.ce, SCIFACT, DL19):
        require(path)
    import torch

    torch.set_num_threads(args.threads)
    configs = [BASELINE] + [c for c in args.configs.split(",") if c and c != BASELINE]
    peak = gemm_peak(args.threads)
    pairs, corpus = scifact_pairs(args.pairs, per_query=20)
    texts = corpus[: args.texts]
    sets, bodies = {}, {}
    for name, data, top, queries in (("scifact", SCIFACT, args.scifact_top, args.scifact_queries),
                                     ("dl19", DL19, args.dl19_top, args.dl19_queries)):
        topics, candidates, found = dataset(name, data, top)
        sets[name] = subset(topics, candidates, queries)
        bodies.update(found)
    contenders = [load(args, label) for label in configs]
    time_rounds(contenders, pairs, texts, args.rounds)
    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[SystemRun]] = {name: [] for name in sets}
    for contender in contenders:
        rows[contender.label] = row = throughput(contender, pairs, texts, peak)
        log.info("%s: %.1f pairs/s, %.1f docs/s", contender.label, row["pairs_per_s"], row["docs_per_s"])
        for name, (queries, candidates, _qrels) in sets.items():
            top = max(map(len, candidates.values()))
            runs[name].append(rerank_only(contender.reranker, contender.label, queries, candidates, bodies, top=top,
                                          depth=top, progress=False))
    payload: dict[str, Any] = {"command": " ".join(sys.argv), "threads": args.threads, "gemm_peak_gflops": peak,
                               "ce": str(args.ce), "configs": rows, "datasets": {}}
    for name, (queries, candidates, qrels) in sets.items():
        report = score_runs(qrels, runs[name], baseline=BASELINE)
        for run in runs[name]:
            rows[run.name][f"{name}_ndcg10"] = report.scores[run.name]["ndcg@10"]
            rows[run.name][f"{name}_p"] = report.p_values.get(run.name, {}).get("ndcg@10")
            rows[run.name][f"{name}_top10_overlap"] = top10_overlap(run, runs[name][0])
        payload["datasets"][name] = {"queries": len(queries), "pairs": sum(map(len, candidates.values())),
                                     "report": report.to_dict()}
    print_table(rows, payload, peak, args)
    print(f"\nwrote {write_json(args.out, payload)}")


def print_table(rows: dict[str, dict[str, Any]], payload: dict[str, Any], peak: float, args: argparse.Namespace) -> None:
    base = rows[BASELINE]

    def quality(row: dict, name: str) -> str:
        delta = row[f"{name}_ndcg10"] - base[f"{name}_ndcg10"]
        p = row[f"{name}_p"]
        mark = "†" if p is not None and p < 0.05 else ""
        return (f"{row[f'{name}_ndcg10']:.3f} ({delta:+.3f}{mark}, p={p:.2f}; top-10 overlap "
                f"{row[f'{name}_top10_overlap']:.1f})" if p is not None else f"{row[f'{name}_ndcg10']:.3f}")

    table = [[label, f"{r['load_s']:.1f}", f"{r['pairs_per_s']:.1f}", f"{r['pairs_per_s'] / base['pairs_per_s']:.2f}x",
              f"{r['rerank_gflops']:.1f} ({r['rerank_pct_peak']:.0f}%)", f"{r['docs_per_s']:.1f}",
              f"{r['docs_per_s'] / base['docs_per_s']:.2f}x", f"{r['encode_gflops']:.1f} ({r['encode_pct_peak']:.0f}%)",
              quality(r, "scifact"), quality(r, "dl19")] for label, r in rows.items()]
    sci, dl = payload["datasets"]["scifact"], payload["datasets"]["dl19"]
    print(f"\nfp32 GEMM peak (torch.mm, {args.threads} threads): {peak:.1f} GFLOPS; re-rank at {base['max_length']} "
          f"tokens; SciFact {sci['queries']} queries ({sci['pairs']} pairs), DL19 {dl['queries']} queries "
          f"({dl['pairs']} pairs); † = nDCG@10 differs from {BASELINE} (paired t-test, p < 0.05); GFLOPS count the "
          f"same model FLOPs for every row (int8 rows: fp32-equivalent), % of the fp32 GEMM peak\n")
    print(markdown_table(["runtime:dtype", "load s", "re-rank pairs/s", "vs torch", "re-rank GFLOPS (% peak)",
                          "layer-1 docs/s", "vs torch", "encode GFLOPS (% peak)", "SciFact nDCG@10 (Δ)",
                          "DL19 nDCG@10 (Δ)"], table))


if __name__ == "__main__":
    main()
