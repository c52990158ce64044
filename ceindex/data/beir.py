"""A small, self-contained reader for BEIR folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Malformed input raises InputError naming the file and line.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from ceindex.errors import InputError


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path} not found: a BEIR folder needs {what}")
    return path


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            if "_id" not in row:
                raise InputError(f"{path}: line {number}: missing '_id'")
            yield number, row


def _text_field(path: Path, number: int, row: dict[str, Any], key: str) -> str:
    value = row.get(key) or ""
    if not isinstance(value, str):
        raise InputError(f"{path}: line {number}: '{key}' must be a string, got {type(value).__name__}")
    return value


def read_corpus(data_dir: str | Path) -> Iterator[dict[str, str]]:
    """Yield ``{"_id", "title", "text"}`` for each document of ``data_dir/corpus.jsonl``."""
    path = _require(Path(data_dir) / "corpus.jsonl", "corpus.jsonl")
    for number, row in _jsonl(path):
        yield {
            "_id": str(row["_id"]),
            "title": _text_field(path, number, row, "title"),
            "text": _text_field(path, number, row, "text"),
        }


def read_queries(data_dir: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from ``data_dir/queries.jsonl``."""
    path = _require(Path(data_dir) / "queries.jsonl", "queries.jsonl")
    return {str(row["_id"]): _text_field(path, number, row, "text") for number, row in _jsonl(path)}


def read_qrels(data_dir: str | Path, split: str) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from ``data_dir/qrels/<split>.tsv`` (header optional)."""
    folder = Path(data_dir) / "qrels"
    path = folder / f"{split}.tsv"
    if not path.is_file():
        splits = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
        raise InputError(f"{path} not found; available splits: {', '.join(splits) or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for number, values in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not values or all(not v.strip() for v in values):
                continue
            if number == 1 and values[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(values) < 3:
                raise InputError(f"{path}: line {number}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(values)}")
            docid = values[2] if len(values) == 4 else values[1]  # 4 columns: TREC "qid iter docid rel"
            qid, docid, score = values[0].strip(), docid.strip(), values[-1].strip()
            try:
                qrels.setdefault(qid, {})[docid] = int(float(score))
            except ValueError:
                raise InputError(f"{path}: line {number}: score {score!r} is not a number") from None
    return qrels


def doc_text(doc: dict[str, str]) -> str:
    """The text embedded for a document: title and text joined by a space, as BEIR does."""
    return f"{doc['title']} {doc['text']}".strip()
