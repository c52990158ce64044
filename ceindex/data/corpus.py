"""Streaming corpus readers: BEIR corpus.jsonl, any JSONL, CSV or TSV, optionally gzipped.

Readers yield ``Document`` for good rows and ``Rejected`` for bad ones (with file and line), so a caller can
index the good rows and report the bad ones without ever holding the corpus in memory.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

from ceindex.errors import InputError

FORMATS = ("jsonl", "csv", "tsv")


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0

    @property
    def body(self) -> str:
        """The text that is both BM25-indexed and embedded: title and text, as BEIR does."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class Rejected:
    source: str
    line: int
    reason: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "id": self.id, "reason": self.reason}


def corpus_path(data_dir: str | Path | None, corpus: str | Path | None) -> Path:
    """Resolve ``--data DIR`` (BEIR folder) or ``--corpus FILE`` to one corpus file."""
    if (data_dir is None) == (corpus is None):
        raise InputError("give exactly one of --data DIR (a BEIR folder) or --corpus FILE")
    if corpus is not None:
        path = Path(corpus)
        if not path.is_file():
            raise InputError(f"corpus file {path} does not exist")
        return path
    folder = Path(data_dir)  # type: ignore[arg-type]
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder} has no corpus.jsonl (expected a BEIR folder: corpus.jsonl, queries.jsonl, qrels/)")


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if ext in ("csv", "tsv"):
        return ext
    raise InputError(f"{path}: cannot tell the format from the name; use .jsonl, .csv or .tsv (optionally .gz)")


def _open_text(path: Path) -> TextIO:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_documents(
    path: str | Path,
    *,
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str = "title",
) -> Iterator[Document | Rejected]:
    """Yield each row of ``path`` as a Document, or as Rejected with the reason (streaming)."""
    path = Path(path)
    fmt = detect_format(path)
    rows = _jsonl_rows(path) if fmt == "jsonl" else _delimited_rows(path, "\t" if fmt == "tsv" else ",")
    for line, row in rows:
        if isinstance(row, Rejected):
            yield row
            continue
        yield _to_document(str(path), line, row, id_field, text_field, title_field)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    with _open_text(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield number, Rejected(str(path), number, f"malformed JSON: {exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(row, dict):
                    yield number, Rejected(str(path), number, f"expected a JSON object, got {type(row).__name__}")
                    continue
                yield number, row
        except (UnicodeDecodeError, EOFError, OSError) as exc:
            raise InputError(f"{path}: cannot read the file after line {number}: {exc}") from None


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    csv.field_size_limit(1 << 30)
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}: line 1: cannot read the header row: {exc}") from None
        try:
            for values in reader:
                number = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    yield number, Rejected(
                        str(path), number, f"has {len(values)} columns but the header has {len(header)}"
                    )
                    continue
                yield number, dict(zip(header, values))
        except csv.Error as exc:
            raise InputError(f"{path}: line {reader.line_num}: malformed {delimiter!r}-separated row: {exc}") from None


def _to_document(
    source: str, line: int, row: dict[str, Any], id_field: str, text_field: str, title_field: str
) -> Document | Rejected:
    raw_id = row.get(id_field)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Rejected(source, line, f"missing id field '{id_field}'")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        return Rejected(source, line, f"id field '{id_field}' must be a string or integer, got {type(raw_id).__name__}")
    doc_id = str(raw_id).strip()
    text = row.get(text_field)
    if text is None:
        return Rejected(source, line, f"missing text field '{text_field}'", doc_id)
    if not isinstance(text, str):
        return Rejected(source, line, f"text field '{text_field}' must be a string, got {type(text).__name__}", doc_id)
    title = row.get(title_field) or ""
    if not isinstance(title, str):
        return Rejected(source, line, f"title field '{title_field}' must be a string, got {type(title).__name__}", doc_id)
    if not text.strip() and not title.strip():
        return Rejected(source, line, "empty text", doc_id)
    metadata = {k: v for k, v in row.items() if k not in (id_field, text_field, title_field)}
    nested = metadata.pop("metadata", None)
    if isinstance(nested, dict):
        metadata.update(nested)
    return Document(id=doc_id, text=text, title=title, metadata=metadata, line=line)
