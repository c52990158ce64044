"""Streaming reader of training triples: ``query<TAB>positive[<TAB>negative...]`` (TSV, no header) or JSONL
(``{"query": ..., "positive": ..., "negative": ... | "negatives": [...]}``), optionally gzipped.

Good rows come as ``Triple``, bad ones as ``Rejected`` with file, line and reason (never silently dropped).
A row's source (e.g. ``msmarco``, ``scifact_train``) comes from a JSONL ``source`` key or, for any format, from a
parallel file beside it holding one source name per line: ``NAME.source.gz`` or ``NAME.source`` for
``NAME.tsv[.gz]`` / ``NAME.jsonl[.gz]`` (the layout of ``shared/data/train-mix``), so a source can be dropped.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ceindex.data.corpus import Rejected, _decode_line, _json_object, _physical_lines
from ceindex.errors import InputError

TRIPLE_FORMATS = ("tsv", "jsonl")


@dataclass
class Triple:
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    source: str | None = None
    line: int = 0


def triples_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("tsv", "txt"):
        return "tsv"
    if ext in ("jsonl", "json", "ndjson"):
        return "jsonl"
    raise InputError(f"{path}: cannot tell the triples format from the name; use .tsv or .jsonl (optionally .gz)")


def sources_file(path: Path) -> Path | None:
    """The parallel per-line source names of ``path`` (``NAME.source[.gz]``), if present."""
    stem = path.name
    for suffix in (".gz", ".tsv", ".txt", ".jsonl", ".json", ".ndjson"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    for name in (f"{stem}.source.gz", f"{stem}.source"):
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def read_triples(path: str | Path) -> Iterator[Triple | Rejected]:
    """Yield each row of ``path`` as a Triple, or as Rejected with the reason (streaming)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"triples file {path} does not exist")
    fmt = triples_format(path)
    names_path = sources_file(path)
    names = _source_names(names_path)
    number = 0
    # Rows end at \n only (a stray \r inside a row is whitespace), so rows and source names stay paired.
    for number, raw in _physical_lines(path, lone_cr_ends_line=False):
        if isinstance(raw, InputError):
            raise raw
        source = _next_name(names, names_path, path, number)
        text = _decode_line(str(path), number, raw)
        if isinstance(text, Rejected):
            yield text
            continue
        if not text.strip() or (number == 1 and fmt == "tsv" and _is_header(text)):
            continue
        row = _tsv_triple(str(path), number, text) if fmt == "tsv" else _jsonl_triple(str(path), number, text)
        if isinstance(row, Triple) and row.source is None:
            row.source = source
        yield row
    if names is not None and next(names, None) is not None:
        raise InputError(f"{names_path} has more lines than {path} ({number}): the source names do not pair with "
                         "the rows; regenerate the .source file")


def _next_name(names: Iterator[str] | None, names_path: Path | None, path: Path, number: int) -> str | None:
    if names is None:
        return None
    name = next(names, None)
    if name is None:
        raise InputError(f"{names_path} has fewer lines than {path} (it ends before line {number}): the source "
                         "names do not pair with the rows; regenerate the .source file")
    return name


def _is_header(text: str) -> bool:
    first = text.split("\t", 1)[0].strip().lower()
    return first in ("query", "queries", "question", "anchor", "q")


def _source_names(path: Path | None) -> Iterator[str] | None:
    if path is None:
        return None

    def names() -> Iterator[str]:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8-sig", newline="\n") as handle:  # type: ignore[operator]
            for line in handle:
                yield line.strip()

    return names()


def _tsv_triple(source: str, number: int, text: str) -> Triple | Rejected:
    columns = [c.strip() for c in text.rstrip("\r\n").split("\t")]
    while len(columns) > 2 and not columns[-1]:  # trailing tabs: no more negatives
        columns.pop()
    if len(columns) < 2:
        return Rejected(source, number, f"has {len(columns)} tab-separated column(s); expected query<TAB>positive[<TAB>negative...]")
    return _checked(source, number, columns[0], columns[1], columns[2:])


def _jsonl_triple(source: str, number: int, text: str) -> Triple | Rejected:
    row = _json_object(source, number, text)
    if isinstance(row, Rejected):
        return row
    query, positive = row.get("query"), row.get("positive", row.get("pos"))
    negatives: Any = row.get("negatives", row.get("negative", row.get("neg", [])))
    if isinstance(negatives, str):
        negatives = [negatives]
    if not isinstance(query, str) or not isinstance(positive, str):
        return Rejected(source, number, 'needs string fields "query" and "positive"')
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        return Rejected(source, number, '"negative(s)" must be a string or a list of strings')
    triple = _checked(source, number, query.strip(), positive.strip(), [n.strip() for n in negatives])
    if isinstance(triple, Triple) and isinstance(row.get("source"), str):
        triple.source = row["source"]
    return triple


def _checked(source: str, number: int, query: str, positive: str, negatives: list[str]) -> Triple | Rejected:
    if not query:
        return Rejected(source, number, "empty query")
    if not positive:
        return Rejected(source, number, "empty positive")
    if any(not n for n in negatives):
        return Rejected(source, number, "empty negative")
    if positive in negatives:
        return Rejected(source, number, "the positive is also given as a negative")
    return Triple(query=query, positive=positive, negatives=negatives, line=number)
