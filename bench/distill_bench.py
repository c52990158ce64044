"""Distillation benchmark (issue 13): every DE-2 CE recipe side by side on SciFact test, in one run.

For BM25, the CE layer encoder, each distilled model in ``bench/results/models`` (see ARMS; ``--arm LABEL=DIR`` adds
or replaces) and the baseline DE: dense exact-cosine retrieval, hybrid (BM25 + that encoder's k-NN, RRF) without and
with CE re-rank of the top ``--rerank-top``; paired t-tests (vs BM25, and between the init arms of the best recipe);
encode throughput of each DE-2 CE vs the baseline DE at equal max length and at each model's own; the training
record of each model (sources, epochs, minutes on this machine); and TREC DL19 (BM25 pool as corpus) rows.

    .venv/bin/python bench/distill_bench.py [--rerank-top 20] [--throughput-docs 200]

Prints Markdown tables and writes bench/results/distill.json. torch runs on 2 threads.

Hybrid goes through the product path: an embedded index per encoder (built with ``build_index``) and
``ceindex.evaluation.pipeline_eval.evaluate``. To keep it affordable on a 2-core CPU: document vectors are computed
once per encoder and cached on disk, and the re-ranker's scores are cached per (query, document) pair on disk, so a
pair that several systems (or an earlier run) send to the cross-encoder is scored once. Re-rank latencies are
therefore not reported; only quality.
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
from _common import DL19, FIXTURE_CE, RESULTS, SCIFACT, bm25_run, markdown_table, require, write_json  # noqa: E402

from ceindex.data.beir import read_qrels, read_queries  # noqa: E402
from ceindex.data.corpus import Document, corpus_path, read_documents  # noqa: E402
from ceindex.evaluation.report import score_runs  # noqa: E402
from ceindex.evaluation.runner import SystemRun  # noqa: E402
from ceindex.layers import exact_search  # noqa: E402
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


def timed_median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- the systems
ARMS = [  # label, folder under bench/results/models (made by the commands in README's distillation section)
    ("DE-2 CE: SciFact train qrels, CE teacher", "de2ce-qrels"),
    ("DE-2 CE: train-mix, zero-shot (no SciFact rows)", "de2ce-train-mix"),
    ("DE-2 CE: label-free (SciFact corpus + CE)", "de2ce-label-free"),
    ("DE-2 CE: qrels + corpus + CE + baseline-DE teacher", "de2ce-best"),
    ("control: same recipe, baseline DE's first layers", "de2-best-control"),
    ("random init: same recipe, nothing copied", "de2-best-random"),
]
BEST, CONTROL, RANDOM, TRAIN_MIX = ARMS[3][0], ARMS[4][0], ARMS[5][0], ARMS[1][0]
BASELINE = "baseline DE all-MiniLM-L6-v2"


def encoders_of(args: argparse.Namespace, layer: int) -> dict[str, tuple[str, Path]]:
    """Label -> (kind, model folder), cheapest first; arms whose folder is missing are left out (logged)."""
    arms = dict((label, MODELS / folder) for label, folder in ARMS)
    for extra in args.arm:
        label, _, folder = extra.partition("=")
        arms[label] = Path(folder)
    found = {label: ("dual", path) for label, path in arms.items() if (path / "config.json").is_file()}
    for label in arms.keys() - found.keys():
        log.warning("left out (no model at %s): %s", arms[label], label)
    return {f"CE layer {layer}": ("ce-layer", args.ce), **found, BASELINE: ("dual", baseline_de_path())}


def corpus_of(data: Path) -> tuple[list[Document], dict[str, dict[str, int]], list[str], list[str]]:
    docs = [d for d in read_documents(corpus_path(data, None)) if isinstance(d, Document)]
    qrels = read_qrels(data, "test")
    queries = read_queries(data)
    qids = [q for q in qrels if q in queries]
    return docs, {q: qrels[q] for q in qids}, qids, [queries[q] for q in qids]


def make_config(kind: str, model: Path, layer: int, max_length: int, dtype: str = "float32") -> EncoderConfig:
    return EncoderConfig(kind=kind, model=str(model), layer=layer, max_length=max_length, batch_size=32,
                         device="cpu", dtype=dtype)


# --------------------------------------------------------------------------- the sections
def dense_section(encoders: dict, layer: int, max_length: int, docs: list[Document], qrels: dict, qids: list[str],
                  qtexts: list[str]) -> tuple[Any, dict[str, np.ndarray], dict[str, dict]]:
    """Exact-cosine retrieval per encoder (each at its own max length, capped at ``max_length``) vs BM25."""
    ids, bodies = [d.id for d in docs], [d.body for d in docs]
    runs = [SystemRun("BM25", bm25_run(ids, bodies, qids, qtexts))]
    vectors: dict[str, np.ndarray] = {}
    dense_runs: dict[str, dict] = {}
    for name, (kind, model) in encoders.items():
        encoder = load_encoder(make_config(kind, model, layer, max_length))
        vectors[name] = cached_encode(encoder, bodies, "float32")
        dense_runs[name] = exact_search(encoder.encode(qtexts), vectors[name], qids, ids, k=100)
        runs.append(SystemRun(name, dense_runs[name]))
        log.info("dense %s done", name)
    return score_runs(qrels, runs, baseline="BM25"), vectors, dense_runs


def arms_section(qrels: dict, dense_runs: dict[str, dict]) -> Any | None:
    """Paired t-tests between the init arms of the best recipe (CE-init vs control vs random init)."""
    arms = [name for name in (BEST, CONTROL, RANDOM) if name in dense_runs]
    if len(arms) < 2 or BEST not in arms:
        return None
    return score_runs(qrels, [SystemRun(n, dense_runs[n]) for n in arms], baseline=BEST)


def throughput_section(encoders: dict, layer: int, texts: list[str], repeats: int) -> list[dict[str, Any]]:
    """docs/s of each encoder at equal max length (128, the DE-2 CE training length) and at its own length."""
    rows = []
    for name, (kind, model) in encoders.items():
        own = 256 if kind == "ce-layer" else _own_length(model)
        for setting, length in (("equal length 128", 128), (f"own length {own}", own)):
            if setting.startswith("own") and own == 128:
                continue
            encoder = load_encoder(make_config(kind, model, layer, length))
            encoder.encode(texts[:64])  # warm-up
            seconds = timed_median(lambda: encoder.encode(texts), repeats)
            rows.append({"encoder": name, "setting": setting, "max_length": length,
                         "docs_per_s": round(len(texts) / seconds, 1), "seconds_median": round(seconds, 2)})
            log.info("throughput %s", rows[-1])
    for setting in {r["setting"].split(" ")[0] for r in rows}:
        base = next((r for r in rows if r["encoder"] == BASELINE and r["setting"].startswith(setting)), None)
        for row in rows:
            if base and row["setting"].startswith(setting):
                row["x_baseline_de"] = round(row["docs_per_s"] / base["docs_per_s"], 2)
    return rows


def _own_length(model: Path) -> int:
    st = json.loads((Path(model) / "sentence_bert_config.json").read_text(encoding="utf-8"))
    return int(st.get("max_seq_length") or 256)


def training_section(encoders: dict) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (_, model) in encoders.items():
        path = Path(model) / "ceindex_distill.json"
        if not path.is_file():
            continue
        meta = json.loads(path.read_text(encoding="utf-8"))
        data = meta["training_data"]
        out[name] = {
            "sources": [f"{s['kind']}:{Path(s['path']).name}" + (f" ({s['split']})" if s.get("split") else "")
                        for s in data.get("sources", [])],
            "triples": data["triples"], "pseudo_query_triples": data.get("pseudo_query_triples"),
            "teachers": ", ".join(t for t, on in (("CE margins", meta.get("teacher")), ("baseline DE", meta.get("teacher_de"))) if on) or "none",
            "init": "random" if not meta["student"]["copied_other"] else meta["student"]["source_kind"],
            "epochs": [(e["epoch"], e["steps"], e.get("partial", False)) for e in meta["epochs"]],
            "complete": meta.get("complete", True), "best_epoch": meta["best_epoch"],
            "held_out_ndcg@10": (meta.get("held_out_metrics") or {}).get("ndcg@10"),
            "minutes": {k: round(v / 60, 1) for k, v in meta["wall_time_s"].items()},
            "command_settings": meta["hyper_parameters"],
        }
    return out


def hybrid_section(args: argparse.Namespace, data: Path, encoders: dict, layer: int, docs: list[Document],
                   vectors: dict[str, np.ndarray], rerank: bool) -> tuple[Any, Any | None]:
    """Through the product pipeline: an embedded index per encoder; systems hybrid-rrf (and hybrid-rrf+rerank),
    plus bm25 (and bm25+rerank) on the first index. Returns (no re-rank report, re-rank report) vs BM25."""
    from ranx import Run

    from ceindex.backends import open_backend
    from ceindex.config import Settings
    from ceindex.evaluation.pipeline_eval import EvalRequest, evaluate
    from ceindex.evaluation.topics import load_topics
    from indexer.build import build_index

    plain: list[SystemRun] = []
    reranked: list[SystemRun] = []
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as home:
        for n, (name, (kind, model)) in enumerate(encoders.items()):
            settings = Settings(index=f"bench-{n}", home=home, encoder=make_config(kind, model, layer, args.max_length))
            settings = replace(settings, search=replace(settings.search, rerank_top=args.rerank_top,
                                                        rerank_max_length=args.rerank_max_length,
                                                        rerank_model=str(args.ce)))
            encoder = PrecomputedEncoder(load_encoder(settings.encoder), {d.body: v for d, v in zip(docs, vectors[name])})
            backend = open_backend(settings)
            try:
                build_index(backend, encoder, corpus_path(data, None), settings.index, settings.build,
                            rejects_path=Path(home) / "rejects.jsonl", progress=False)
            finally:
                backend.close()
            rerank_this = rerank and not any(skip in name for skip in args.no_rerank_for)
            systems = ["hybrid-rrf"] + (["hybrid-rrf+rerank"] if rerank_this else [])
            if n == 0:
                systems = ["bm25"] + (["bm25+rerank"] if rerank else []) + systems
            # re-rank rows at depth rerank_top: deeper pages re-rank further windows (20 -> 100 pairs per query)
            for chosen, depth in (([x for x in systems if not x.endswith("+rerank")], 100),
                                  ([x for x in systems if x.endswith("+rerank")], args.rerank_top)):
                if not chosen:
                    continue
                out_dir = Path(home) / f"eval-{n}-{depth}"
                evaluate(settings, EvalRequest(data_dir=data, split="test", systems=",".join(chosen), depth=depth,
                                               progress=False), out_dir)
                for system in chosen:
                    label = "BM25" if system.startswith("bm25") else name
                    trec = out_dir / "runs" / f"{system.replace('+', '_plus_')}.trec"
                    run = SystemRun(label, Run.from_file(str(trec), kind="trec").to_dict())
                    (reranked if system.endswith("+rerank") else plain).append(run)
            log.info("hybrid %s done", name)
        qrels = load_topics(data, "test").qrels
    return score_runs(qrels, plain, baseline="BM25"), score_runs(qrels, reranked, baseline="BM25") if rerank else None


def persistent_rerank_cache(home: Path) -> None:
    """Patch CrossEncoderReranker.score to score each distinct (query, document) pair once, across runs."""
    from ceindex.distill.cache import ScoreStore, text_key
    from ceindex.models.runtime import weights_sha256
    from ceindex.models.scorer import CrossEncoderReranker

    original = CrossEncoderReranker.score

    def score(self, pairs):  # type: ignore[no-untyped-def]
        store = ScoreStore(home, f"bench-rerank-{weights_sha256(Path(self.model_ref))[:16]}-{getattr(self.model, 'dtype', '?')}-{self.max_length}")
        pairs = list(pairs)
        return store.get_or_compute([text_key(q, d) for q, d in pairs],
                                    lambda missing: original(self, [pairs[i] for i in missing]))

    CrossEncoderReranker.score = score  # type: ignore[method-assign]


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "sentence_transformers", "bm25s", "ceindex", "search_pipeline", "indexer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for path in (args.data, args.ce):
        require(path)
    import torch

    from ceindex.config import Settings

    torch.set_num_threads(2)
    persistent_rerank_cache(Settings().home_path / "cache" / "bench-rerank")
    started = time.perf_counter()
    layer, layer_source = best_ce_layer()
    encoders = encoders_of(args, layer)
    result: dict[str, Any] = {"data": str(args.data), "ce": str(args.ce), "ce_layer": layer,
                              "ce_layer_source": layer_source, "models": {n: str(m) for n, (_, m) in encoders.items()},
                              "rerank_top": args.rerank_top, "rerank_max_length": args.rerank_max_length,
                              "command": " ".join(sys.argv), "complete": False}
    result["training"] = training_section(encoders)
    print_training(result["training"])
    docs, qrels, qids, qtexts = corpus_of(args.data)
    dense, vectors, dense_runs = dense_section(encoders, layer, args.max_length, docs, qrels, qids, qtexts)
    result["dense"] = dense.to_dict()
    print("\n## SciFact test, dense (exact cosine); † = differs from BM25 (paired t-test, p < 0.05)\n")
    print(dense.markdown())
    arms = arms_section(qrels, dense_runs)
    if arms is not None:
        result["arms"] = arms.to_dict()
        print(f"\n## Init arms of the best recipe, dense; † = differs from {BEST}\n")
        print(arms.markdown())
    write_json(args.out, result)
    if not args.skip_throughput:
        texts = [d.body for d in docs[: args.throughput_docs]]
        result["throughput"] = {"docs": args.throughput_docs, "repeats": args.repeats,
                                "rows": throughput_section(encoders, layer, texts, args.repeats)}
        print_throughput(result["throughput"])
        write_json(args.out, result)
    plain, reranked = hybrid_section(args, args.data, encoders, layer, docs, vectors, rerank=not args.no_rerank)
    result["hybrid"] = plain.to_dict()
    print("\n## SciFact test, hybrid BM25 + encoder (RRF), no re-rank; † = differs from BM25\n")
    print(plain.markdown())
    if reranked is not None:
        result["hybrid_rerank"] = reranked.to_dict()
        print(f"\n## ... then CE re-rank of the top {args.rerank_top}; † = differs from BM25 + re-rank\n")
        print(reranked.markdown())
    write_json(args.out, result)
    result["dl19"] = {} if args.skip_dl19 else dl19_section(args, encoders, layer)
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    print(f"\nwrote {write_json(args.out, result)} ({result['bench_seconds'] / 60:.0f} min)")


def dl19_section(args: argparse.Namespace, encoders: dict, layer: int) -> dict[str, Any]:
    """TREC DL19 with its BM25 pool as the corpus: BM25, the train-mix and best DE-2 CE, the baseline DE."""
    if not DL19.is_dir():
        return {}
    chosen = {n: e for n, e in encoders.items() if n in (TRAIN_MIX, BEST, BASELINE)}
    docs, qrels, qids, qtexts = corpus_of(DL19)
    dense, vectors, _ = dense_section(chosen, layer, args.max_length, docs, qrels, qids, qtexts)
    plain, reranked = hybrid_section(args, DL19, chosen, layer, docs, vectors,
                                     rerank=not (args.no_rerank or args.dl19_no_rerank))
    print("\n## TREC DL19 (BM25 top-100 pool as corpus), dense; † = differs from BM25\n")
    print(dense.markdown())
    print("\n## TREC DL19, hybrid (RRF), no re-rank\n")
    print(plain.markdown())
    if reranked is not None:
        print(f"\n## TREC DL19, hybrid then CE re-rank of the top {args.rerank_top}\n")
        print(reranked.markdown())
    return {"dense": dense.to_dict(), "hybrid": plain.to_dict(),
            "hybrid_rerank": reranked.to_dict() if reranked is not None else None}


def print_training(training: dict[str, dict[str, Any]]) -> None:
    rows = [[name, "; ".join(t["sources"]), t["triples"], t["teachers"], t["init"],
             " ".join(f"{e}{'(partial)' if p else ''}:{s}" for e, s, p in t["epochs"]), t["held_out_ndcg@10"],
             t["minutes"]["prepare"], t["minutes"]["training_epochs"], t["minutes"]["total"]] for name, t in training.items()]
    print("\n## Training (this machine, 2 cores)\n")
    print(markdown_table(["model", "sources", "triples", "teachers", "init", "epoch:batches", "held-out nDCG@10",
                          "prepare min", "train min", "total min"], rows))


def print_throughput(section: dict[str, Any]) -> None:
    rows = [[r["encoder"], r["setting"], r["docs_per_s"], f"{r.get('x_baseline_de', float('nan')):.2f}x"]
            for r in section["rows"]]
    print(f"\n## Encode throughput ({section['docs']} SciFact documents, batch 32, 2 threads, median of "
          f"{section['repeats']})\n")
    print(markdown_table(["encoder", "max length", "docs/s", "vs baseline DE (same setting)"], rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", default=[], metavar="LABEL=DIR",
                        help="another distilled model to include (or replace an ARMS label's folder)")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE)
    parser.add_argument("--max-length", type=int, default=256, help="encoder max_length cap (DE-2 CE use their own 128)")
    parser.add_argument("--rerank-top", type=int, default=20)
    parser.add_argument("--rerank-max-length", type=int, default=192)
    parser.add_argument("--no-rerank", action="store_true", help="skip the CE re-rank rows (the slow part)")
    parser.add_argument("--no-rerank-for", action="append", default=[], metavar="TEXT",
                        help="skip the re-rank row of systems whose label contains TEXT (repeatable)")
    parser.add_argument("--skip-throughput", action="store_true", help="e.g. to fill the caches on a busy machine")
    parser.add_argument("--skip-dl19", action="store_true")
    parser.add_argument("--dl19-no-rerank", action="store_true", help="DL19 rows without the re-rank systems")
    parser.add_argument("--throughput-docs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="distill.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
