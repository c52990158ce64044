"""Shared helpers for the benchmark scripts: paths to ../shared, a Markdown table, JSON output."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
DL19 = SHARED / "data" / "trec-dl19"
FIXTURE_CE = SHARED / "models" / "ce-minilm-l6-scifact"
RESULTS = REPO / "bench" / "results"


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"benchmark needs {path} (the shared data/models folder beside the repo); it is absent")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    payload = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}} | payload
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


def bm25_run(ids: list[str], bodies: list[str], qids: list[str], queries: list[str], k: int = 100) -> dict:
    """BM25 top-k (bm25s, Lucene formula, ceindex.text's k1/b and tokeniser) as {qid: {doc_id: score}}."""
    import bm25s

    from ceindex.text import BM25_B, BM25_K1, bm25_tokenize

    retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
    retriever.index(bm25_tokenize(bodies), show_progress=False)
    idx, scores = retriever.retrieve(bm25_tokenize(queries), k=min(k, len(ids)), show_progress=False, n_threads=0)
    return {q: {ids[int(i)]: float(s) for i, s in zip(row_i, row_s)} for q, row_i, row_s in zip(qids, idx, scores)}
