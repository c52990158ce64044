"""The embedded store's typed field columns: exact filters as numpy masks over the index's rows.

Each typed field is two parallel arrays, ``rows`` (which document) and ``values`` (one value each; a list field
has one pair per element, a missing value none), so term / terms / range / exists are one vectorised comparison
and a scatter into a boolean mask over all documents, and all / any / not are mask algebra. Keywords are stored
as codes into a sorted vocabulary; dates as epoch milliseconds (UTC); booleans as 0/1. Written once at seal
(``fields.npz`` + ``fields.json``), memory-mapped at search time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ceindex.data.files import atomic_write_text
from ceindex.filters import All, Any_, Exists, FieldType, Filter, Not, Range, Term, Terms, document_values

NPZ, VOCAB = "fields.npz", "fields.json"


@dataclass
class _Column:
    ftype: FieldType
    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


class FieldColumns:
    def __init__(self, count: int, types: Mapping[str, FieldType], rows: dict[str, np.ndarray],
                 values: dict[str, np.ndarray], vocab: dict[str, list[str]]) -> None:
        self.count = count
        self.types = dict(types)
        self.rows = rows
        self.values = values
        self.vocab = vocab
        self._codes = {name: {word: code for code, word in enumerate(words)} for name, words in vocab.items()}

    # --- writing ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, count: int, types: Mapping[str, FieldType],
              metadatas: Iterable[tuple[int, Mapping[str, Any]]]) -> "FieldColumns":
        """Columns from ``(row, metadata)`` pairs; values were checked at build time (``check_metadata``)."""
        columns = {name: _Column(ftype) for name, ftype in types.items()}
        for row, metadata in metadatas:
            for name, column in columns.items():
                for value in document_values(column.ftype, metadata.get(name)):
                    column.rows.append(row)
                    column.values.append(value)
        rows, values, vocab = {}, {}, {}
        for name, column in columns.items():
            rows[name] = np.asarray(column.rows, dtype=np.int64)
            if column.ftype.kind == "keyword":
                vocab[name] = sorted(set(column.values))
                codes = {word: code for code, word in enumerate(vocab[name])}
                values[name] = np.asarray([codes[v] for v in column.values], dtype=np.int64)
            elif column.ftype.kind == "double":
                values[name] = np.asarray(column.values, dtype=np.float64)
            else:  # integer, date (ms), boolean (0/1)
                values[name] = np.asarray([int(v) for v in column.values], dtype=np.int64)
        return cls(count, types, rows, values, vocab)

    def save(self, folder: Path) -> None:
        arrays = {f"{name}.rows": self.rows[name] for name in self.types}
        arrays |= {f"{name}.values": self.values[name] for name in self.types}
        np.savez(folder / NPZ, **arrays)
        atomic_write_text(folder / VOCAB, json.dumps({"count": self.count, "vocab": self.vocab}))

    @classmethod
    def load(cls, folder: Path, types: Mapping[str, FieldType]) -> "FieldColumns":
        if not types:
            return cls(0, {}, {}, {}, {})
        info = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
        with np.load(folder / NPZ) as arrays:
            rows = {name: arrays[f"{name}.rows"] for name in types}
            values = {name: arrays[f"{name}.values"] for name in types}
        return cls(int(info["count"]), types, rows, values, info["vocab"])

    # --- searching -------------------------------------------------------------------------------
    def mask(self, node: Filter) -> np.ndarray:
        """A boolean array over the index's rows: True where the document passes ``node``."""
        if isinstance(node, All):
            out = np.ones(self.count, dtype=bool)
            for clause in node.clauses:
                out &= self.mask(clause)
            return out
        if isinstance(node, Any_):
            out = np.zeros(self.count, dtype=bool)
            for clause in node.clauses:
                out |= self.mask(clause)
            return out
        if isinstance(node, Not):
            return ~self.mask(node.clause)
        rows, values = self.rows[node.field], self.values[node.field]
        if isinstance(node, Exists):
            selected = np.ones(len(rows), dtype=bool)
        elif isinstance(node, Term):
            selected = values == self._value(node.field, node.value)
        elif isinstance(node, Terms):
            selected = np.isin(values, [self._value(node.field, v) for v in node.values])
        else:
            selected = self._in_range(values, node)
        out = np.zeros(self.count, dtype=bool)
        out[rows[selected]] = True
        return out

    def _value(self, name: str, value: Any) -> Any:
        if self.types[name].kind == "keyword":
            return self._codes[name].get(value, -1)  # -1: in no document
        return int(value) if isinstance(value, bool) else value

    @staticmethod
    def _in_range(values: np.ndarray, node: Range) -> np.ndarray:
        selected = np.ones(len(values), dtype=bool)
        for op, bound in node.bounds().items():
            selected &= {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[op](values, bound)
        return selected
