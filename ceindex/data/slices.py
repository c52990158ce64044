"""Which slice of a corpus a row belongs to, for ``ceindex build --slice I/N`` (N builders, one index).

A row's slice is a stable hash of its document id: the first 8 bytes of its SHA-256, as an unsigned big-endian
integer, modulo N (slices are numbered 1..N). Why the id and not the row number:

- every builder, on any machine and Python version, computes the same slice (no ``hash()`` randomisation, no
  platform integer sizes), and a corpus re-exported in another row order or format keeps each document's slice;
- two rows with the same id always fall into the same slice, so the build's duplicate-id check still sees both;
- each slice gets about 1/N of the corpus whatever the order of the rows.

A row with no id (unparseable JSON, a CSV row missing its id column) has nothing to hash; it goes to slice
``line mod N`` so exactly one builder reports it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ceindex.errors import ConfigError

MAX_SLICES = 1024
_SPEC = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")


@dataclass(frozen=True)
class SliceSpec:
    """Slice ``number`` (1-based) of ``count``."""

    number: int
    count: int

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"

    @property
    def key(self) -> str:
        """A name-safe label, e.g. ``slice-2-of-3``."""
        return f"slice-{self.number}-of-{self.count}"

    def holds(self, doc_id: str | None, line: int) -> bool:
        """Whether the row with ``doc_id`` (None: a row without an id, on ``line``) belongs to this slice."""
        return slice_of(doc_id, line, self.count) == self.number


def parse_slice(text: str) -> SliceSpec:
    """``"I/N"`` as a SliceSpec, or a ConfigError saying what a slice looks like."""
    match = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"--slice {text!r} is not I/N (e.g. --slice 2/4: the 2nd of 4 slices)")
    number, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SLICES:
        raise ConfigError(f"--slice {text}: the number of slices must be 1-{MAX_SLICES}")
    if not 1 <= number <= count:
        raise ConfigError(f"--slice {text}: slices are numbered 1 to {count}")
    return SliceSpec(number, count)


def slice_of(doc_id: str | None, line: int, count: int) -> int:
    """The slice (1..count) of a row: see the module docstring."""
    if doc_id is None:
        return line % count + 1
    digest = hashlib.sha256(doc_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1
