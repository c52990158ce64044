"""Distillation benchmark on SciFact test: BM25, the CE layer encoder, DE-2 CE, the baseline DE and the
control, each as dense exact-cosine retrieval and each as hybrid (RRF) + cross-encoder re-rank; plus encode
throughput (float32 and int8) on the same 1,000 documents, with int8 quality.

    .venv/bin/python bench/distill_bench.py [--de2ce DIR] [--control DIR] [--rerank-top 20]

Prints Markdown tables and writes bench/results/distill.json. torch runs on 2 threads.

Hybrid + re-rank goes through the product path: an embedded index per encoder (built with ``build_index``)
and ``ceindex.evaluation.pipeline_eval.evaluate`` with system ``hybrid-rrf+rerank``. To keep it affordable
on a 2-core CPU: document vectors are computed once per encoder and handed to ``build_index`` (the vectors
are the encoder's own), and the re-ranker's scores are memoised per (query, document) across systems, so
a pair that several systems send to the cross-encoder is scored once. Re-rank latencies are therefore not
reported; only quality.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, RESULTS, SCIFACT, bm25_run, markdown_table, require, write_json  # noqa: E402

from ceindex.data.beir import read_qrels, read_queries  # noqa: E402
from ceindex.data.corpus import Document, corpus_path, read_documents  # noqa: E402
from ceindex.evaluation.report import score_runs  # noqa: E402
from ceindex.evaluation.runner import SystemRun  # noqa: E402
from ceindex.layers import evaluate_run, exact_search  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from ceindex.models.dual import baseline_de_path  # noqa: E402

log = logging.getLogger("distill_bench")
MODELS = RESULTS / "models"


# --------------------------------------------------------------------------- helpers
def best_ce_layer() -> tuple[int, str]:
    for path in sorted((RESULTS / "layers-scifact").glob("*.json")):
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["best_layer"]), str(path.relative_to(RESULTS.parent.parent))
        except (KeyError, ValueError):
            continue
    return 1, "default (no bench/results/layers-scifact/*.json)"


class PrecomputedEncoder:
    """An encoder whose document vectors were already computed (by ``inner``): build_index reuses them."""

    def __init__(self, inner: Any, vectors: dict[str, np.ndarray]) -> None:
        self.inner, self.vectors, self.dims = inner, vectors, inner.dims

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            for text, vec in zip(missing, self.inner.encode(missing)):
                self.vectors[text] = vec
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, self.dims), np.float32)

    def describe(self):
        return self.inner.describe()


def cached_encode(encoder: Any, texts: list[str], dtype: str, show_progress: bool = True) -> np.ndarray:
    """``encoder.encode(texts)``, cached on disk by the encoder's description and the texts (reruns are cheap)."""
    import hashlib

    from ceindex.config import Settings

    desc = encoder.describe()
    key = hashlib.sha256(json.dumps([desc.to_dict() if hasattr(desc, "to_dict") else str(desc), dtype, texts],
                                    sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]
    path = Settings().home_path / "cache" / "bench-vectors" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def memoise_reranker() -> dict[tuple, float]:
    """Patch CrossEncoderReranker.score to score each distinct (query, document) pair once per run."""
    from ceindex.models.scorer import CrossEncoderReranker

    memo: dict[tuple, float] = {}
    original = CrossEncoderReranker.score

    def score(self, pairs):  # type: ignore[no-untyped-def]
        key = (self.model_ref, self.max_length)
        todo = list(dict.fromkeys(p for p in pairs if (key, p) not in memo))
        if todo:
            for pair, value in zip(todo, original(self, todo)):
                memo[(key, pair)] = float(value)
        return np.array([memo[(key, p)] for p in pairs], dtype=np.float32)

    CrossEncoderReranker.score = score  # type: ignore[method-assign]
    return memo


def timed_median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--de2ce", type=Path, default=MODELS / "de2ce-scifact")
    parser.add_argument("--control", type=Path, default=MODELS / "de2-control")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE)
    parser.add_argument("--max-length", type=int, default=256, help="encoder max_length (all encoders)")
    parser.add_argument("--rerank-top", type=int, default=20)
    parser.add_argument("--rerank-max-length", type=int, default=192)
    parser.add_argument("--throughput-docs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hybrid", action="store_true")
    parser.add_argument("--hybrid-from", type=Path, default=None,
                        help="take the hybrid + re-rank section from an earlier complete run's JSON instead of "
                             "recomputing it (~25 min); for re-measuring throughput on a quiet machine")
    parser.add_argument("--out", default="distill.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "sentence_transformers", "bm25s", "ceindex", "search_pipeline", "indexer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for path in (args.data, args.ce, args.de2ce, args.control):
        require(path)
    earlier = _earlier_hybrid(args) if args.hybrid_from is not None else None  # read before this run overwrites it
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    layer, layer_source = best_ce_layer()
    docs = [d for d in read_documents(corpus_path(args.data, None)) if isinstance(d, Document)]
    ids, bodies = [d.id for d in docs], [d.body for d in docs]
    qrels = read_qrels(args.data, "test")
    all_queries = read_queries(args.data)
    qids = [q for q in qrels if q in all_queries]
    qtexts = [all_queries[q] for q in qids]
    qrels = {q: qrels[q] for q in qids}

    def config(kind: str, model: Path, dtype: str = "float32") -> EncoderConfig:
        return EncoderConfig(kind=kind, model=str(model), layer=layer, max_length=args.max_length, batch_size=32,
                             device="cpu", dtype=dtype)

    encoders = {  # cheapest first, so partial logs are useful on a slow machine
        f"CE layer {layer}": ("ce-layer", args.ce),
        "DE-2 CE (distilled)": ("dual", args.de2ce),
        "DE-2 control (from baseline DE)": ("dual", args.control),
        "baseline DE (all-MiniLM-L6-v2)": ("dual", baseline_de_path()),
    }
    # ---- dense retrieval (float32), keeping document vectors for the hybrid indexes
    runs = [SystemRun("BM25", bm25_run(ids, bodies, qids, qtexts))]
    doc_vectors: dict[str, np.ndarray] = {}
    encode_s: dict[str, float] = {}
    for name, (kind, model) in encoders.items():
        log.info("dense: %s", name)
        encoder = load_encoder(config(kind, model))
        begin = time.perf_counter()
        doc_vectors[name] = cached_encode(encoder, bodies, "float32")
        queries = encoder.encode(qtexts)
        encode_s[name] = round(time.perf_counter() - begin, 1)
        runs.append(SystemRun(name, exact_search(queries, doc_vectors[name], qids, ids, k=100)))
        log.info("dense %s: %s (%.0f s)", name, evaluate_run(qrels, runs[-1].run), encode_s[name])
    dense = score_runs(qrels, runs, baseline="BM25")
    print("\n## Dense retrieval (exact cosine), SciFact test\n")
    print(dense.markdown())

    # ---- throughput on the same texts, float32 and int8, plus int8 quality
    texts = bodies[: args.throughput_docs]
    throughput: dict[str, dict[str, Any]] = {}
    for name in (f"CE layer {layer}", "DE-2 CE (distilled)", "baseline DE (all-MiniLM-L6-v2)"):
        kind, model = encoders[name]
        for dtype in ("float32", "int8"):
            encoder = load_encoder(config(kind, model, dtype))
            encoder.encode(texts[:64])  # warm-up
            seconds = timed_median(lambda: encoder.encode(texts), args.repeats)
            entry = {"docs_per_s": round(len(texts) / seconds, 1), "seconds_median": round(seconds, 2)}
            if dtype == "int8":
                vecs = cached_encode(encoder, bodies, "int8")
                run = exact_search(encoder.encode(qtexts), vecs, qids, ids, k=100)
                entry["ndcg@10"] = round(score_runs(qrels, [SystemRun(name, run)], baseline=name).scores[name]["ndcg@10"], 4)
            else:
                entry["ndcg@10"] = round(dense.scores[name]["ndcg@10"], 4)
            throughput.setdefault(name, {})[dtype] = entry
            log.info("throughput %s %s: %s", name, dtype, entry)
    base = throughput["baseline DE (all-MiniLM-L6-v2)"]["float32"]["docs_per_s"]
    rows = []
    for name, by_dtype in throughput.items():
        for dtype, entry in by_dtype.items():
            entry["x_baseline_de_fp32"] = round(entry["docs_per_s"] / base, 2)
            rows.append([name, dtype, f"{entry['docs_per_s']:.1f}", f"{entry['x_baseline_de_fp32']:.2f}x", entry["ndcg@10"]])
    print(f"\n## Encode throughput ({len(texts)} SciFact documents, max_length {args.max_length}, "
          f"batch 32, 2 torch threads, median of {args.repeats})\n")
    print(markdown_table(["encoder", "dtype", "docs/s", "vs baseline DE fp32", "nDCG@10"], rows))

    def write_partial(hybrid: dict, hybrid_report: Any, done: bool) -> None:
        _write(args, encoders, layer, layer_source, ids, qids, dense, encode_s, throughput, hybrid, hybrid_report,
               started, done)

    write_partial({}, None, False)
    # ---- hybrid (RRF) + re-rank through the product pipeline
    hybrid: dict[str, dict[str, float]] = {}
    hybrid_report = None
    if earlier is not None:
        hybrid, hybrid_report = earlier
    elif not args.skip_hybrid:
        hybrid, hybrid_report = run_hybrid(args, encoders, config, docs, doc_vectors)
    if hybrid_report is not None:
        print(f"\n## Each + CE re-rank of the top {args.rerank_top} (BM25 alone; the others hybrid BM25 + k-NN, RRF)\n")
        print(hybrid_report.markdown())

    write_partial(hybrid, hybrid_report, True)


def _write(args, encoders, layer, layer_source, ids, qids, dense, encode_s, throughput, hybrid, hybrid_report, started, done) -> None:  # noqa: ANN001
    texts_n = args.throughput_docs
    payload = {
        "data": str(args.data), "split": "test", "queries": len(qids), "documents": len(ids),
        "ce": str(args.ce), "ce_layer": layer, "ce_layer_source": layer_source,
        "models": {n: str(m) for n, (_, m) in encoders.items()},
        "training": {n: _training_record(m) for n, (k, m) in encoders.items() if (Path(m) / "ceindex_distill.json").is_file()},
        "encoder_max_length": args.max_length,
        "dense": dense.to_dict(),
        "dense_encode_seconds_full_corpus": encode_s,  # ~0 where the vectors came from the bench cache
        "hybrid_rerank": {"rerank_top": args.rerank_top, "rerank_max_length": args.rerank_max_length,
                          "scores": hybrid, "report": hybrid_report.to_dict() if hybrid_report else None},
        "throughput": {"docs": texts_n, "repeats": args.repeats, "torch_threads": 2, "results": throughput},
        "bench_seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
        "hybrid_rerank_reused_from_command": getattr(args, "hybrid_reused_from", None),
        "note": "shared 2-core machine: timings are noisy medians",
        "complete": done,
    }
    path = write_json(args.out, payload)
    print(f"\nwrote {path}")


def run_hybrid(args: argparse.Namespace, encoders: dict, config: Callable, docs: list[Document],
               doc_vectors: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], Any]:
    """One embedded index per encoder, evaluated with ``pipeline_eval.evaluate`` (system hybrid-rrf+rerank;
    the first index also runs bm25+rerank). Runs are read back from the written TREC files and scored together."""
    from ranx import Run

    from ceindex.backends import open_backend
    from ceindex.config import Settings
    from ceindex.evaluation.pipeline_eval import EvalRequest, evaluate
    from ceindex.evaluation.topics import load_topics
    from indexer.build import build_index

    memo = memoise_reranker()
    runs: list[SystemRun] = []
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as home:
        for n, (name, (kind, model)) in enumerate(encoders.items()):
            index = f"scifact-{n}"
            settings = Settings(index=index, home=home, encoder=config(kind, model))
            settings = replace(settings, search=replace(settings.search, rerank_top=args.rerank_top,
                                                        rerank_max_length=args.rerank_max_length,
                                                        rerank_model=str(args.ce)))
            encoder = PrecomputedEncoder(load_encoder(settings.encoder), {d.body: v for d, v in zip(docs, doc_vectors[name])})
            backend = open_backend(settings)
            try:
                build_index(backend, encoder, corpus_path(args.data, None), index, settings.build,
                            rejects_path=Path(home) / "rejects.jsonl", progress=False)
            finally:
                backend.close()
            systems = ("bm25+rerank," if n == 0 else "") + "hybrid-rrf+rerank"
            out_dir = Path(home) / f"eval-{n}"
            log.info("%s: %s (%d re-rank pairs scored so far)", systems, name, len(memo))
            report, _ = evaluate(settings, EvalRequest(data_dir=args.data, split="test", systems=systems), out_dir)
            for system in systems.split(","):
                label = "BM25" if system.startswith("bm25") else name
                trec = out_dir / "runs" / f"{system.replace('+', '_plus_')}.trec"
                runs.append(SystemRun(label, Run.from_file(str(trec), kind="trec").to_dict()))
                scores[label] = report.scores[system]
        qrels = load_topics(args.data, "test").qrels
    log.info("re-ranker scored %d distinct pairs in all", len(memo))
    return scores, score_runs(qrels, runs, baseline="BM25")


def _earlier_hybrid(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], Any]:
    from ceindex.evaluation.report import EvalReport

    earlier = json.loads(args.hybrid_from.read_text(encoding="utf-8"))
    section = earlier.get("hybrid_rerank") or {}
    if not earlier.get("complete") or not section.get("report"):
        sys.exit(f"{args.hybrid_from}: no complete hybrid + re-rank section to reuse")
    if (section["rerank_top"], section["rerank_max_length"]) != (args.rerank_top, args.rerank_max_length):
        sys.exit(f"{args.hybrid_from}: re-rank settings differ from this run's --rerank-top/--rerank-max-length")
    args.hybrid_reused_from = earlier.get("command")
    return section["scores"], EvalReport(**section["report"])


def _training_record(model: Path) -> dict[str, Any]:
    meta = json.loads((Path(model) / "ceindex_distill.json").read_text(encoding="utf-8"))
    return {k: meta.get(k) for k in ("best_epoch", "stopped_early", "held_out_before_training", "held_out_metrics",
                                      "wall_time_s", "hyper_parameters")} | {"epochs": meta.get("epochs")}


if __name__ == "__main__":
    main()
