"""BEIR folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv — strict readers for sweeps and training.

They share the streaming row reader of ``ceindex.data.corpus`` (one JSON/CSV parser for the project) but,
unlike ``ceindex build``, stop at the first malformed row with an InputError naming the file and line:
an experiment on half a dataset would be silently wrong.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from ceindex.data.corpus import Document, Rejected, body_text, read_documents
from ceindex.errors import InputError

logger = logging.getLogger(__name__)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path} not found: a BEIR folder needs {what}")
    return path


def _strict(path: Path, *, allow_empty: bool) -> Iterator[Document]:
    for record in read_documents(path):
        if isinstance(record, Rejected):
            if allow_empty and record.reason == "empty text":
                logger.warning("%s: line %d: document %s has no text; skipped", path, record.line, record.id)
                continue
            raise InputError(f"{path}: line {record.line}: {record.reason}")
        yield record


def read_corpus(data_dir: str | Path) -> Iterator[dict[str, str]]:
    """Yield ``{"_id", "title", "text"}`` for each document of ``data_dir/corpus.jsonl``."""
    path = _require(Path(data_dir) / "corpus.jsonl", "corpus.jsonl")
    for doc in _strict(path, allow_empty=True):
        yield {"_id": doc.id, "title": doc.title, "text": doc.text}


def read_queries(data_dir: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from ``data_dir/queries.jsonl``."""
    path = _require(Path(data_dir) / "queries.jsonl", "queries.jsonl")
    return {doc.id: doc.text for doc in _strict(path, allow_empty=False)}


def read_qrels(data_dir: str | Path, split: str) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from ``data_dir/qrels/<split>.tsv``."""
    folder = Path(data_dir) / "qrels"
    path = folder / f"{split}.tsv"
    if not path.is_file():
        splits = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
        raise InputError(f"{path} not found; available splits: {', '.join(splits) or 'none'}")
    return read_qrels_file(path)


def read_qrels_file(path: Path) -> dict[str, dict[str, int]]:
    """BEIR TSV (``query-id corpus-id score``, header optional) or TREC qrels (``qid iter docid rel``)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or (number == 1 and parts[0].lower() in ("query-id", "query_id", "qid")):
                continue
            if len(parts) not in (3, 4):
                raise InputError(f"{path}: line {number}: expected 'query-id corpus-id score' or "
                                 f"'qid iter docid rel', got {len(parts)} columns")
            qid, docid, score = parts[0], parts[-2], parts[-1]
            try:
                qrels.setdefault(qid, {})[docid] = int(float(score))
            except ValueError:
                raise InputError(f"{path}: line {number}: score {score!r} is not a number") from None
    return qrels


def doc_text(doc: dict[str, str]) -> str:
    """The text embedded for a document: ``body_text`` of its title and text, stripped also without a title."""
    return body_text(doc["title"], doc["text"]).strip()
