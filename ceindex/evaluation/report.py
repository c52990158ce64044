"""Score runs with ranx and write the report: Markdown, JSON, TREC runs, a PNG chart and an HTML page."""
from __future__ import annotations

import html
import json
import logging
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ceindex.evaluation.runner import SystemRun
from ceindex.redact import redact_deep

if TYPE_CHECKING:
    from ranx import Qrels, Run

logger = logging.getLogger(__name__)
# ranx's numba kernels warn about an internal uint64 cast on every metric; it does not affect the values.
warnings.filterwarnings("ignore", message="unsafe cast from uint64 to int64")

# ranx names -> the paper's labels. Hits@10 is the share of queries with a relevant document in the top 10.
METRICS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "hit_rate@10": "Hits@10", "recall@100": "R@100", "map": "MAP"}
PACKAGES = ("ceindex", "ranx", "torch", "transformers", "opensearch-py", "bm25s", "numpy")


@dataclass
class EvalReport:
    systems: list[str]
    baseline: str
    scores: dict[str, dict[str, float]]
    p_values: dict[str, dict[str, float]]  # system -> metric -> p-value against the baseline
    significant: dict[str, dict[str, bool]]
    latency_ms: dict[str, dict[str, dict[str, float]]]
    queries: int
    unjudged_queries: int
    provenance: dict[str, Any] = field(default_factory=dict)
    max_p: float = 0.05
    stat_test: str = "student"
    fusion_tuning: dict[str, Any] | None = None  # ``eval --tune-fusion-on``: FusionTuning.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        labels = list(METRICS.values())
        lines = [
            "| system | " + " | ".join(labels) + " | p50 ms | p95 ms |",
            "| --- | " + " | ".join("---:" for _ in labels) + " | ---: | ---: |",
        ]
        for name in self.systems:
            cells = []
            for metric in METRICS:
                mark = "†" if self.significant.get(name, {}).get(metric) else ""
                cells.append(f"{self.scores[name][metric]:.3f}{mark}")
            total = self.latency_ms.get(name, {}).get("total", {})
            p50 = f"{total['p50']:.1f}" if total else "-"
            p95 = f"{total['p95']:.1f}" if total else "-"
            label = f"{name} (baseline)" if name == self.baseline else name
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {p50} | {p95} |")
        lines.append("")
        lines.append(
            f"{self.queries} judged queries ({self.unjudged_queries} queries without judgements in this split left out). "
            f"† = differs from {self.baseline} (paired {self.stat_test} t-test, p < {self.max_p})."
        )
        if self.fusion_tuning is not None:
            lines += ["", self.fusion_tuning["markdown"]]
        return "\n".join(lines)

    def latency_markdown(self) -> str:
        stages = ["encode", "bm25", "knn", "fusion", "fetch", "rerank", "total"]
        lines = ["| system | " + " | ".join(f"{s} p50/p95" for s in stages) + " |",
                 "| --- | " + " | ".join("---:" for _ in stages) + " |"]
        for name in self.systems:
            lat = self.latency_ms.get(name, {})
            cells = [f"{lat[s]['p50']:.1f} / {lat[s]['p95']:.1f}" if s in lat else "-" for s in stages]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def score_runs(
    qrels: dict[str, dict[str, int]],
    runs: Sequence[SystemRun],
    *,
    baseline: str,
    unjudged: int = 0,
    max_p: float = 0.05,
    provenance: dict[str, Any] | None = None,
) -> EvalReport:
    from ranx import Qrels, compare

    names = [r.name for r in runs]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the systems ({', '.join(names)})")
    ranx_qrels = Qrels(qrels)
    ranx_runs = [comparable_run(system, ranx_qrels) for system in runs]
    report = compare(ranx_qrels, ranx_runs, metrics=list(METRICS), max_p=max_p, stat_test="student", rounding_digits=6)
    data = report.to_dict()
    scores = {name: {m: float(data[name]["scores"][m]) for m in METRICS} for name in names}
    p_values: dict[str, dict[str, float]] = {}
    significant: dict[str, dict[str, bool]] = {}
    for name in names:
        if name == baseline:
            continue
        p_values[name] = {m: float(data[name]["comparisons"][baseline][m]) for m in METRICS}
        significant[name] = {m: p < max_p for m, p in p_values[name].items()}
    return EvalReport(
        systems=names,
        baseline=baseline,
        scores=scores,
        p_values=p_values,
        significant=significant,
        latency_ms={r.name: r.latency_summary() for r in runs},
        queries=len(qrels),
        unjudged_queries=unjudged,
        provenance=redact_deep(provenance or {}),  # a URL with credentials (command line, settings) never lands in a report
        max_p=max_p,
    )


def comparable_run(system: SystemRun, qrels: Qrels) -> Run:
    """``system``'s run as a ranx ``Run`` that holds every judged query and no other (ranx's ``make_comparable``):
    a query without results gets an empty one and scores 0 on every metric."""
    from ranx import Run

    # ranx cannot build a Run from a dict without a single document; an empty Run is the same thing to it
    run = Run(system.run, name=system.name) if any(system.run.values()) else Run(name=system.name)
    return run.make_comparable(qrels)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_report(report: EvalReport, runs: Sequence[SystemRun], out_dir: Path) -> dict[str, str]:
    """Write report.json, report.md, runs/<system>.trec, chart.png and report.html; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    paths["json"] = str(out_dir / "report.json")
    (out_dir / "report.md").write_text(report.markdown() + "\n\n" + report.latency_markdown() + "\n", encoding="utf-8")
    paths["markdown"] = str(out_dir / "report.md")
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    for system in runs:
        _write_trec(system, runs_dir / f"{system.name.replace('+', '_plus_')}.trec")
    paths["runs"] = str(runs_dir)
    chart = out_dir / "chart.png"
    _chart(report, chart)
    paths["chart"] = str(chart)
    (out_dir / "report.html").write_text(_html(report, chart), encoding="utf-8")
    paths["html"] = str(out_dir / "report.html")
    return paths


def _write_trec(system: SystemRun, path: Path) -> None:
    """``qid Q0 doc rank score name`` lines, queries in run order, scores to 6 decimals, one newline each.

    Not ranx's ``Run.save(kind="trec")``: it writes the same rows, but re-sorts queries by id, prints scores as
    Python floats (``4.0``, not ``4.000000``), leaves the last line without a newline, and cannot save a run
    without a single document. Readers (ranx, trec_eval) would parse both alike, but the files would change.
    """
    with open(path, "w", encoding="utf-8") as handle:
        for qid, docs in system.run.items():
            for rank, (doc_id, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {system.name}\n")


def _chart(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = list(METRICS)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(report.systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    for i, name in enumerate(report.systems):
        ax.bar(x + i * width, [report.scores[name][m] for m in metrics], width, label=name)
    ax.set_xticks(x + width * (len(report.systems) - 1) / 2, [METRICS[m] for m in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(report: EvalReport, chart: Path) -> str:
    import base64

    image = base64.b64encode(chart.read_bytes()).decode()
    rows = []
    for name in report.systems:
        cells = "".join(
            f"<td>{report.scores[name][m]:.3f}{'&dagger;' if report.significant.get(name, {}).get(m) else ''}</td>"
            for m in METRICS
        )
        total = report.latency_ms.get(name, {}).get("total")
        lat = f"<td>{total['p50']:.1f}</td><td>{total['p95']:.1f}</td>" if total else "<td>-</td><td>-</td>"
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}{lat}</tr>")
    head = "".join(f"<th>{label}</th>" for label in METRICS.values())
    provenance = html.escape(json.dumps(report.provenance, indent=2))
    tuning = f"<p>{html.escape(report.fusion_tuning['verdict'])}</p>" if report.fusion_tuning else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ceindex evaluation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>ceindex evaluation</h1>
<p>{report.queries} judged queries; {report.unjudged_queries} without judgements left out.
&dagger; = differs from <b>{html.escape(report.baseline)}</b> (paired t-test, p &lt; {report.max_p}).</p>
<table><tr><th>system</th>{head}<th>p50 ms</th><th>p95 ms</th></tr>{''.join(rows)}</table>{tuning}
<p><img alt="metrics per system" src="data:image/png;base64,{image}"></p>
<h2>Provenance</h2><pre>{provenance}</pre>
<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p></body></html>
"""
