"""Typed metadata fields and the one filter language of ceindex.

A build declares (``build.fields`` / ``--field NAME=TYPE``) or infers the types of a document's metadata fields:
``keyword``, ``integer``, ``double``, ``date``, ``boolean``, each optionally a list (``keyword[]``). Those types
are recorded with the index, written into the engine mapping (OpenSearch) or the field columns (embedded), and
every row's values are checked against them at build time (a value that does not fit is a reject naming the
file, line and field).

A filter is a JSON object, the same for the Python API, ``ceindex search --filter``, ``serve`` and ``eval``::

    {"term": {"lang": "en"}}                      exact value (on a list field: any element)
    {"terms": {"tags": ["a", "b"]}}               any of the values
    {"range": {"year": {"gte": 2000, "lt": 2010}}}  numbers and dates: gt, gte, lt, lte
    {"exists": "field"}                           the document has a value for the field
    {"all": [f, ...]}  {"any": [f, ...]}  {"not": f}

``parse_filter`` checks it against an index's field types and returns frozen dataclasses with normalised values
(dates become epoch milliseconds, UTC), so every backend compares exactly the same values. ``matches`` evaluates
a filter on one document's metadata: the reference the backends are tested against.

This module is layer 0: it imports nothing of ceindex but the error types.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Union

from ceindex.errors import ConfigError, InputError

KINDS = ("keyword", "integer", "double", "date", "boolean")
NUMERIC_KINDS = ("integer", "double", "date")  # the kinds a range can compare
RANGE_OPS = ("gt", "gte", "lt", "lte")
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_FILTER_DEPTH = 16
MAX_FILTER_NODES = 1024
MAX_TERMS = 1024
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
INFER_SAMPLE = 1000  # rows read to infer field types when none are declared
# The date forms both stores read the same way (a subset of OpenSearch's strict_date_optional_time): a date, or a
# date and time with optional seconds, fraction and zone (no zone = UTC); or an integer of epoch milliseconds.
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?$")
DATE_FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.fff]][Z|+HH:MM] (UTC when no zone) or epoch milliseconds"


# --- field types ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldType:
    kind: str  # one of KINDS
    array: bool = False

    def __str__(self) -> str:
        return self.kind + ("[]" if self.array else "")

    @classmethod
    def parse(cls, text: Any, where: str) -> "FieldType":
        if not isinstance(text, str):
            raise ConfigError(f"{where}: the type must be a string such as 'keyword' or 'keyword[]', got {text!r}")
        kind, array = (text[:-2], True) if text.endswith("[]") else (text, False)
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown type {text!r}; allowed: {', '.join(KINDS)} (append [] for a list, "
                              "e.g. keyword[])")
        return cls(kind, array)


FieldTypes = Mapping[str, FieldType]


def parse_field_types(raw: Mapping[str, Any] | None, where: str = "build.fields") -> dict[str, FieldType]:
    """``{"lang": "keyword", "tags": "keyword[]"}`` -> ``{name: FieldType}``; a ConfigError names a bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of field name to type, e.g. {{lang: keyword, year: integer}}")
    out: dict[str, FieldType] = {}
    for name, text in raw.items():
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise ConfigError(f"{where}: field name {name!r} is not allowed; use letters, digits and _ (not first "
                              "a digit), at most 64 characters")
        out[name] = FieldType.parse(text, f"{where}.{name}")
    return out


def field_types_dict(types: FieldTypes) -> dict[str, str]:
    """The recorded form: ``{name: "keyword[]"}``, sorted by name."""
    return {name: str(types[name]) for name in sorted(types)}


def parse_field_flags(flags: Iterable[str]) -> dict[str, str]:
    """``("lang=keyword", "tags=keyword[]")`` (the repeatable ``--field`` flag) -> ``{"lang": "keyword", ...}``."""
    out: dict[str, str] = {}
    for flag in flags:
        name, sep, kind = flag.partition("=")
        if not sep or not name.strip() or not kind.strip():
            raise ConfigError(f"--field {flag!r}: write NAME=TYPE, e.g. --field lang=keyword --field tags=keyword[]")
        out[name.strip()] = kind.strip()
    parse_field_types(out, "--field")
    return out


# --- values -------------------------------------------------------------------------------------
def parse_date(value: Any) -> int:
    """A date value as epoch milliseconds (UTC); ValueError says which forms are accepted."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not LONG_MIN <= value <= LONG_MAX:
            raise ValueError(f"{value} is out of range for epoch milliseconds")
        return value
    if isinstance(value, str) and _DATE.match(value.strip()):
        text = value.strip().replace("Z", "+00:00")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:  # e.g. month 13
            raise ValueError(f"{value!r} is not a real date ({exc})") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(round(moment.timestamp() * 1000))
    raise ValueError(f"{value!r} is not a date; use {DATE_FORMS}")


def _scalar(kind: str, value: Any) -> Any:
    """``value`` as the normalised value of ``kind`` (dates: epoch ms); ValueError with a short reason."""
    if kind == "keyword":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {_show(value)}")
    if kind == "integer":
        number = _number(value, integer=True)
        if not LONG_MIN <= number <= LONG_MAX:
            raise ValueError(f"{value!r} is out of the 64-bit integer range")
        return number
    if kind == "double":
        return float(_number(value, integer=False))
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"expected true or false, got {_show(value)}")
    if kind == "date":
        return parse_date(value)
    raise AssertionError(kind)


def _number(value: Any, *, integer: bool) -> int | float:
    if isinstance(value, str):  # CSV/TSV columns are strings
        text = value.strip()
        try:
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if integer and not isinstance(value, int):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        value = int(value)
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def is_missing(value: Any) -> bool:
    """None, an empty string (an empty CSV cell) or an empty list: the field has no value."""
    return value is None or value == "" or value == []


def document_values(ftype: FieldType, value: Any) -> list[Any]:
    """The normalised values of one document's field (empty when missing); ValueError when one does not fit."""
    if is_missing(value):
        return []
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not ftype.array:
        raise ValueError(f"expected one {ftype.kind} value, got a list (declare the type as {ftype.kind}[])")
    return [_scalar(ftype.kind, item) for item in items if not is_missing(item)]


def check_metadata(metadata: Mapping[str, Any], types: FieldTypes) -> tuple[dict[str, Any], str | None]:
    """Validate a document's typed fields: ``(metadata to store, None)`` or ``(metadata, reason)`` for a reject.

    Numbers and booleans read from CSV/TSV strings are stored as numbers and booleans; dates keep their text (both
    stores parse it the same way); an empty CSV cell is no value.
    """
    out = dict(metadata)
    for name, ftype in types.items():
        if name not in out:
            continue
        value = out[name]
        try:
            values = document_values(ftype, value)
        except ValueError as exc:
            return out, f"field '{name}' is not {ftype}: {exc}"
        if is_missing(value):
            out.pop(name)
        elif ftype.kind != "date":
            out[name] = values if isinstance(value, list) else values[0]
    return out, None


# --- inference ---------------------------------------------------------------------------------
def _kind_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "date" if _DATE.match(value.strip()) and _parses_as_date(value) else "keyword"
    return None


def _parses_as_date(value: str) -> bool:
    try:
        parse_date(value)
    except ValueError:
        return False
    return True


def infer_field_types(metadatas: Iterable[Mapping[str, Any]]) -> tuple[dict[str, FieldType], dict[str, str]]:
    """Types of the metadata fields seen in a sample: ``(typed, skipped)``, ``skipped`` naming each field left
    untyped and why (mixed kinds, objects). Integers mixed with doubles are doubles; strings that all read as
    dates are dates; a field that is a list in any row is a list."""
    kinds: dict[str, set[str]] = {}
    arrays: set[str] = set()
    skipped: dict[str, str] = {}
    for metadata in metadatas:
        for name, value in metadata.items():
            if name in skipped or is_missing(value):
                continue
            if not isinstance(name, str) or not FIELD_NAME.match(name):
                skipped[name] = "not a usable field name (letters, digits, _)"
                continue
            items = value if isinstance(value, list) else [value]
            if isinstance(value, list):
                arrays.add(name)
            found = {_kind_of(item) for item in items if not is_missing(item)}
            if None in found:
                skipped[name] = "holds objects or nested lists"
                continue
            kinds.setdefault(name, set()).update(k for k in found if k)
    typed: dict[str, FieldType] = {}
    for name, found in kinds.items():
        if name in skipped or not found:
            continue
        if found == {"integer", "double"}:
            found = {"double"}
        if len(found) > 1:
            skipped[name] = f"mixed kinds in the sample ({', '.join(sorted(found))})"
            continue
        typed[name] = FieldType(found.pop(), name in arrays)
    return dict(sorted(typed.items())), dict(sorted(skipped.items()))


# --- filters -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    field: str
    value: Any  # normalised: str, int, float, bool, or epoch ms for dates


@dataclass(frozen=True)
class Terms:
    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    field: str
    gt: float | int | None = None
    gte: float | int | None = None
    lt: float | int | None = None
    lte: float | int | None = None

    def bounds(self) -> dict[str, Any]:
        return {op: getattr(self, op) for op in RANGE_OPS if getattr(self, op) is not None}


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class All:
    clauses: tuple["Filter", ...]


@dataclass(frozen=True)
class Any_:
    clauses: tuple["Filter", ...]


@dataclass(frozen=True)
class Not:
    clause: "Filter"


Filter = Union[Term, Terms, Range, Exists, All, Any_, Not]
OPERATORS = ("term", "terms", "range", "exists", "all", "any", "not")
EXAMPLE = '{"all": [{"term": {"lang": "en"}}, {"range": {"year": {"gte": 2000}}}]}'


def parse_filter(raw: Any, types: FieldTypes) -> Filter | None:
    """A filter (a dict, a JSON string, or an already parsed Filter; None/{} = no filter) checked against the
    index's ``types``; an InputError names the field and what is allowed."""
    if raw is None or isinstance(raw, (Term, Terms, Range, Exists, All, Any_, Not)):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"filter is not valid JSON ({exc}); write e.g. {EXAMPLE}") from None
    if isinstance(raw, Mapping) and not raw:
        return None
    parser = _Parser(types)
    return parser.node(raw, 0)


class _Parser:
    def __init__(self, types: FieldTypes) -> None:
        self.types = types
        self.nodes = 0

    def node(self, raw: Any, depth: int) -> Filter:
        self.nodes += 1
        if depth > MAX_FILTER_DEPTH or self.nodes > MAX_FILTER_NODES:
            raise InputError(f"filter is too large: at most {MAX_FILTER_DEPTH} levels of nesting and "
                             f"{MAX_FILTER_NODES} clauses")
        if not isinstance(raw, Mapping) or len(raw) != 1:
            raise InputError(f"each filter clause must be an object with exactly one of {', '.join(OPERATORS)}; "
                             f"got {_show(raw)} (e.g. {EXAMPLE})")
        op, body = next(iter(raw.items()))
        if op in ("all", "any"):
            if not isinstance(body, list) or not body:
                raise InputError(f"filter '{op}' takes a non-empty list of clauses, got {_show(body)}")
            clauses = tuple(self.node(item, depth + 1) for item in body)
            return All(clauses) if op == "all" else Any_(clauses)
        if op == "not":
            return Not(self.node(body, depth + 1))
        if op == "exists":
            return Exists(self.field(body, op))
        if op in ("term", "terms", "range"):
            if not isinstance(body, Mapping) or len(body) != 1:
                raise InputError(f"filter '{op}' takes an object with one field, e.g. {{\"{op}\": {{\"FIELD\": ...}}}}; "
                                 f"got {_show(body)}")
            name, value = next(iter(body.items()))
            name = self.field(name, op)
            return getattr(self, op)(name, self.types[name], value)
        raise InputError(f"unknown filter operator {op!r}; allowed: {', '.join(OPERATORS)}")

    def field(self, name: Any, op: str) -> str:
        if not isinstance(name, str):
            raise InputError(f"filter '{op}' needs a field name (a string), got {_show(name)}")
        if name not in self.types:
            known = ", ".join(f"{n} ({t})" for n, t in sorted(self.types.items())) or "none (the index has no typed " \
                "fields; declare them at build time with --field NAME=TYPE or build.fields)"
            raise InputError(f"filter on unknown field '{name}'; the index's filterable fields: {known}")
        return name

    def value(self, name: str, ftype: FieldType, value: Any, op: str) -> Any:
        if isinstance(value, (list, dict)) or value is None:
            raise InputError(f"filter '{op}' on '{name}' ({ftype}) needs one {ftype.kind} value, got {_show(value)}")
        try:
            return _scalar(ftype.kind, value)
        except ValueError as exc:
            raise InputError(f"filter '{op}' on '{name}' ({ftype}): {exc}") from None

    def term(self, name: str, ftype: FieldType, value: Any) -> Term:
        if ftype.kind == "keyword" and not isinstance(value, str):
            raise InputError(f"filter 'term' on '{name}' (keyword) needs a string, got {_show(value)}")
        return Term(name, self.value(name, ftype, value, "term"))

    def terms(self, name: str, ftype: FieldType, values: Any) -> Terms:
        if not isinstance(values, list) or not values:
            raise InputError(f"filter 'terms' on '{name}' needs a non-empty list of values, got {_show(values)}")
        if len(values) > MAX_TERMS:
            raise InputError(f"filter 'terms' on '{name}' has {len(values)} values; at most {MAX_TERMS}")
        return Terms(name, tuple(self.term(name, ftype, v).value for v in values))

    def range(self, name: str, ftype: FieldType, bounds: Any) -> Range:
        if ftype.kind not in NUMERIC_KINDS:
            raise InputError(f"filter 'range' on '{name}': it is a {ftype} field; range works on integer, double and "
                             "date fields (use term or terms)")
        if not isinstance(bounds, Mapping) or not bounds or set(bounds) - set(RANGE_OPS):
            raise InputError(f"filter 'range' on '{name}' takes bounds among {', '.join(RANGE_OPS)}, e.g. "
                             f'{{"range": {{"{name}": {{"gte": ..., "lt": ...}}}}}}; got {_show(bounds)}')
        kind = "date" if ftype.kind == "date" else "double"
        values: dict[str, Any] = {}
        for op, bound in bounds.items():
            values[op] = self.value(name, FieldType(kind), bound, "range")
            if kind == "double" and float(values[op]).is_integer() and abs(values[op]) < 2**53:
                values[op] = int(values[op])  # keep integer bounds integers (exact on long fields)
        return Range(name, **values)


def filter_to_dict(node: Filter) -> dict[str, Any]:
    """The JSON form of a parsed filter (dates as epoch ms), e.g. for reports."""
    if isinstance(node, Term):
        return {"term": {node.field: node.value}}
    if isinstance(node, Terms):
        return {"terms": {node.field: list(node.values)}}
    if isinstance(node, Range):
        return {"range": {node.field: node.bounds()}}
    if isinstance(node, Exists):
        return {"exists": node.field}
    if isinstance(node, All):
        return {"all": [filter_to_dict(c) for c in node.clauses]}
    if isinstance(node, Any_):
        return {"any": [filter_to_dict(c) for c in node.clauses]}
    return {"not": filter_to_dict(node.clause)}


def fields_of(node: Filter) -> set[str]:
    if isinstance(node, (All, Any_)):
        return set().union(*(fields_of(c) for c in node.clauses))
    if isinstance(node, Not):
        return fields_of(node.clause)
    return {node.field}


def in_range(value: Any, node: Range) -> bool:
    return ((node.gt is None or value > node.gt) and (node.gte is None or value >= node.gte)
            and (node.lt is None or value < node.lt) and (node.lte is None or value <= node.lte))


def matches(node: Filter, metadata: Mapping[str, Any], types: FieldTypes) -> bool:
    """Whether a document with ``metadata`` passes ``node`` (a list field passes a clause when any element does)."""
    if isinstance(node, All):
        return all(matches(c, metadata, types) for c in node.clauses)
    if isinstance(node, Any_):
        return any(matches(c, metadata, types) for c in node.clauses)
    if isinstance(node, Not):
        return not matches(node.clause, metadata, types)
    values = document_values(types[node.field], metadata.get(node.field))
    if isinstance(node, Exists):
        return bool(values)
    if isinstance(node, Term):
        return node.value in values
    if isinstance(node, Terms):
        return any(v in node.values for v in values)
    return any(in_range(v, node) for v in values)
