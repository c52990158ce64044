"""Streaming corpus readers: BEIR corpus.jsonl, any JSONL, CSV or TSV, optionally gzipped.

Readers yield ``Document`` for good rows and ``Rejected`` for bad ones (with file and line), so a caller can
index the good rows and report the bad ones without ever holding the corpus in memory. Files are read as
bytes and decoded line by line, so a line that is not UTF-8 is one rejected row, not a failed build; line
numbers are physical lines of the file (1-based; a CSV record spanning lines is reported at its first).
"""
from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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
        return body_text(self.title, self.text)


def body_text(title: str, text: str) -> str:
    """Title and text joined by a space (as BEIR does), stripped; the text as it is when there is no title.

    The one place this join is written: ``Document.body``, the embedded store's BM25 index and the BEIR
    readers of the layer sweep and distillation all call it.
    """
    return f"{title} {text}".strip() if title else text


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


_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_QUOTE = '"'
# How far a quoted CSV/TSV field may run on past the line it opens on (see _DelimitedRecords).
MAX_RECORD_LINES = 10_000
MAX_RECORD_BYTES = 32 << 20

_RawLine = tuple[int, bytes | InputError]


def _open_binary(path: Path) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open the file: {exc}") from None


def _physical_lines(path: Path, *, lone_cr_ends_line: bool = True) -> Iterator[_RawLine]:
    """Yield ``(number, bytes)`` for each physical line, 1-based, terminator kept, a UTF-8 BOM removed.

    Lines end at ``\\n``, ``\\r\\n`` or (unless ``lone_cr_ends_line`` is False, as for JSONL, where a CR is
    whitespace inside a row) a lone ``\\r``, as text mode with ``newline=""`` splits them. Decoding
    is left to the caller, line by line, so that one bad byte costs one row, not the file. A read error (a
    truncated or corrupt .gz, an I/O error) comes as a last ``InputError`` item rather than being raised
    here, so that a reader which looked ahead can still give back every row before it.
    """
    number = 0
    with _open_binary(path) as handle:
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as exc:
                where = f"after line {number}" if number else "at the start"
                yield number + 1, InputError(
                    f"{path}: the file is truncated or corrupt {where} (the rows before were read): {exc}"
                )
                return
            if number == 0:
                raw = _strip_bom(path, raw)
            for piece in raw.splitlines(keepends=True) if lone_cr_ends_line and b"\r" in raw else (raw,):
                number += 1
                yield number, piece


def _strip_bom(path: Path, first: bytes) -> bytes:
    if first.startswith(_UTF16_BOMS):
        raise InputError(
            f"{path}: line 1: the file is UTF-16 or UTF-32 (it starts with a byte-order mark); "
            "ceindex reads UTF-8: convert it first (e.g. iconv -f UTF-16 -t UTF-8)"
        )
    return first[len(_BOM):] if first.startswith(_BOM) else first


def _utf8_problem(raw: bytes) -> str | None:
    """None if ``raw`` is valid UTF-8, else the first bad byte and its (1-based, character) column."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8")) + 1
        return f"byte 0x{raw[exc.start]:02x} at column {column}"
    return None


def _decode_line(source: str, number: int, raw: bytes) -> str | Rejected:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(source, number, f"not valid UTF-8 ({_utf8_problem(raw)})")


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
    source = str(path)
    for number, raw in _physical_lines(path, lone_cr_ends_line=False):
        if isinstance(raw, InputError):
            raise raw
        text = _decode_line(source, number, raw)
        if isinstance(text, Rejected):
            yield number, text
        elif text.strip():
            yield number, _json_object(source, number, text)


def _json_object(source: str, number: int, text: str) -> dict[str, Any] | Rejected:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejected(source, number, f"malformed JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return Rejected(source, number, "malformed JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return Rejected(source, number, f"malformed JSON: {str(exc).splitlines()[0]}")
    if not isinstance(row, dict):
        return Rejected(source, number, f"expected a JSON object, got {type(row).__name__}")
    return row


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    csv.field_size_limit(1 << 30)
    records = _DelimitedRecords(path, delimiter)
    header = records.header()
    if header is None:
        return
    for number, values in records.rows():
        if isinstance(values, Rejected):
            yield number, values
        elif len(values) != len(header):
            reason = f"has {len(values)} columns but the header has {len(header)}"
            yield number, Rejected(str(path), number, reason)
        else:
            yield number, dict(zip(header, values))


class _LineSource:
    """Physical lines with push-back, so that a record which looked ahead can return the lines it took."""

    def __init__(self, lines: Iterator[_RawLine]) -> None:
        self._lines = lines
        self._back: deque[_RawLine] = deque()

    def next(self) -> _RawLine | None:
        if self._back:
            return self._back.popleft()
        return next(self._lines, None)

    def give_back(self, items: list[_RawLine]) -> None:
        self._back.extendleft(reversed(items))


class _Feed:
    """The csv reader's input for one record: its first line, then one more line each time the reader asks.

    The csv module asks for another line only while a quoted field is still open at the end of a line, so
    the lines taken are exactly the record's lines. A continuation is refused (``cut`` says why) past the
    bounds, at the end of the file, or at a read error; a continuation line that is not valid UTF-8 is taken
    with replacement characters and remembered in ``bad_utf8``, so a whole record is rejected for it.
    """

    def __init__(self, lines: _LineSource) -> None:
        self._lines = lines
        self._first: str | None = None
        self._max_lines = 1
        self._bytes = 0
        self.taken: list[tuple[int, bytes, str]] = []
        self.cut = ""
        self.bad_utf8 = ""

    def start(self, number: int, raw: bytes, text: str, max_lines: int) -> None:
        self._first, self._max_lines, self._bytes = text, max_lines, len(raw)
        self.taken, self.cut, self.bad_utf8 = [(number, raw, text)], "", ""

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self._first is not None:
            text, self._first = self._first, None
            return text
        self.cut = self._refusal()
        if self.cut:
            raise StopIteration
        item = self._lines.next()
        if item is None:
            self.cut = "not closed by the end of the file"
            raise StopIteration
        number, raw = item
        if isinstance(raw, InputError):
            self._lines.give_back([item])
            self.cut = "not closed before the file became unreadable"
            raise StopIteration
        return self._take(number, raw)

    def _refusal(self) -> str:
        """Why the record may not take one more line ("" if it may)."""
        if len(self.taken) >= self._max_lines:
            return "not closed on this line" if self._max_lines == 1 else f"not closed within {self._max_lines} lines"
        if self._bytes >= MAX_RECORD_BYTES:
            return f"not closed within {MAX_RECORD_BYTES} bytes"
        return ""

    def _take(self, number: int, raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            self.bad_utf8 = self.bad_utf8 or f"line {number}: {_utf8_problem(raw)}"
        self.taken.append((number, raw, text))
        self._bytes += len(raw)
        return text


class _DelimitedRecords:
    """Split a CSV/TSV file into records, each reported at the physical line it starts on.

    A line without a quote character is one record (``str.split``, the fast path). Otherwise the csv module
    parses it, and may continue onto the following lines only while a quoted field is open, as CSV allows
    embedded newlines. A record that spans lines is accepted only if it closes within MAX_RECORD_LINES /
    MAX_RECORD_BYTES, parses in strict mode (a closing quote followed by a delimiter or the line end) and has
    the header's column count. Otherwise its first line is rejected for an unbalanced quote and reading
    resumes at the line after it, so one stray quote costs one row instead of swallowing the rows up to the
    next quote (what reading the file with one csv.reader did). Single-line records keep the csv module's
    lenient parsing (``"a"b`` reads as ``ab``), as before.
    """

    def __init__(self, path: Path, delimiter: str) -> None:
        self._source = str(path)
        self._delimiter = delimiter
        self._lines = _LineSource(_physical_lines(path))
        self._feed = _Feed(self._lines)
        self._reader = csv.reader(self._feed, delimiter=delimiter)
        self._strict = {"delimiter": delimiter, "strict": True}
        self._columns = 0

    def header(self) -> list[str] | None:
        """The first non-blank record, which must be one readable line; None for an empty file."""
        for number, values in self._records(max_lines=1):
            if isinstance(values, Rejected):
                raise InputError(f"{self._source}: line {number}: cannot read the header row "
                                 f"(so no row can be read): {values.reason}")
            self._columns = len(values)
            return values
        return None

    def rows(self) -> Iterator[tuple[int, list[str] | Rejected]]:
        return self._records(max_lines=MAX_RECORD_LINES)

    def _records(self, max_lines: int) -> Iterator[tuple[int, list[str] | Rejected]]:
        while (item := self._lines.next()) is not None:
            number, raw = item
            if isinstance(raw, InputError):
                raise raw
            text = _decode_line(self._source, number, raw)
            if isinstance(text, Rejected):
                yield number, text
                continue
            values = self._values(number, raw, text, max_lines)
            if isinstance(values, Rejected) or any(v.strip() for v in values):
                yield number, values

    def _values(self, number: int, raw: bytes, text: str, max_lines: int) -> list[str] | Rejected:
        if _QUOTE not in text:
            return text.rstrip("\r\n").split(self._delimiter)
        self._feed.start(number, raw, text, max_lines)
        try:
            values = next(self._reader)
        except csv.Error as exc:
            return self._reject(number, f"malformed {self._delimiter!r}-separated row: {exc}")
        if self._feed.cut:
            return self._reject(number, f"unbalanced quote: the quoted field opened on this line is "
                                        f"{self._feed.cut}")
        if len(self._feed.taken) > 1:
            return self._check_spanning(number, values)
        return values

    def _check_spanning(self, number: int, values: list[str]) -> list[str] | Rejected:
        end = self._feed.taken[-1][0]
        try:
            next(csv.reader([text for _, _, text in self._feed.taken], **self._strict))
        except csv.Error as exc:
            return self._reject(number, f"unbalanced quote: the quoted field opened on this line "
                                        f"closes badly on line {end} ({exc})")
        if len(values) != self._columns:
            return self._reject(number, f"unbalanced quote: the record from this line to line {end} "
                                        f"has {len(values)} columns but the header has {self._columns}")
        if self._feed.bad_utf8:
            return Rejected(self._source, number, f"not valid UTF-8 (in the quoted field that starts on this "
                                                  f"line, {self._feed.bad_utf8})")
        return values

    def _reject(self, number: int, reason: str) -> Rejected:
        """Reject the record's first line and give back the lines it looked ahead at, to be read as rows."""
        self._lines.give_back([(n, raw) for n, raw, _ in self._feed.taken[1:]])
        return Rejected(self._source, number, reason)


def _to_document(
    source: str, line: int, row: dict[str, Any], id_field: str, text_field: str, title_field: str
) -> Document | Rejected:
    if _has_lone_surrogate(row):
        return Rejected(source, line, "not valid Unicode: a \\uD800-\\uDFFF escape without its pair")
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


def _has_lone_surrogate(row: dict[str, Any]) -> bool:
    """Whether any string in ``row`` (keys and values, nested) holds a lone surrogate, which JSON escapes allow
    but UTF-8, the tokenizer and the stores cannot carry."""
    stack: list[Any] = [row]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False
