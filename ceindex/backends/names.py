"""The one rule for index names, on every backend: OpenSearch's own rules, plus what keeps the embedded store safe.

An index name is an alias; each build writes a physical index ``NAME-<timestamp>``. The embedded store uses both
as folder names, so a name that passes :func:`index_name` can never point outside the store.
"""
from __future__ import annotations

import re
import time

from ceindex.errors import ConfigError

MAX_NAME_BYTES = 255
_STAMP = r"[0-9]{8}t[0-9]{9}"
_STAMP_CHARS = len("-20261129t054512123")
MAX_ALIAS_BYTES = MAX_NAME_BYTES - _STAMP_CHARS
LOCKS_INDEX = "ceindex-build-locks"
_ALLOWED = re.compile(r"[a-z0-9][a-z0-9_.+-]*")  # lowercase; no \ / * ? " < > | space , # :


def index_name(name: object) -> str:
    """``name`` if it is a valid ceindex index name; otherwise a ConfigError saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise ConfigError("the index name is empty; give one with --index NAME (lowercase letters, digits, - _ . +)")
    shown = name if len(name) <= 60 else name[:57] + "..."
    if len(name.encode("utf-8")) > MAX_ALIAS_BYTES:
        raise ConfigError(
            f"index name {shown!r} is too long: at most {MAX_ALIAS_BYTES} bytes (each build adds a "
            f"{_STAMP_CHARS}-character timestamp and the engine allows {MAX_NAME_BYTES})"
        )
    if name in (".", ".."):
        raise ConfigError(f"index name {name!r} is not allowed")
    if not _ALLOWED.fullmatch(name):
        raise ConfigError(
            f"index name {shown!r} is not allowed: use lowercase letters, digits and - _ . + only, starting with a "
            "letter or digit (no /, \\, *, ?, quotes, <, >, |, spaces, commas, # or :)"
        )
    if looks_physical(name):
        raise ConfigError(
            f"index name {shown!r} ends like a ceindex physical index (NAME-<timestamp>); search it by its alias, "
            "or build under a name without that ending"
        )
    if name == LOCKS_INDEX:
        raise ConfigError(f"index name {name!r} is reserved for ceindex's build locks")
    return name


def physical_name(alias: str) -> str:
    """A new physical index name for a build of ``alias``."""
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + f"{int(time.time() * 1000) % 1000:03d}"
    return f"{index_name(alias)}-{stamp}"


def is_physical_of(physical: str, alias: str) -> bool:
    """Whether ``physical`` is named like a build of exactly ``alias`` (not of ``alias-x``)."""
    return re.fullmatch(rf"{re.escape(alias)}-{_STAMP}", physical) is not None


def looks_physical(name: str) -> bool:
    """Whether ``name`` is written like a physical index (``ALIAS-<timestamp>``)."""
    return re.search(rf"-{_STAMP}\Z", name) is not None


def searchable_name(name: object) -> str:
    """A name to search: an alias (see :func:`index_name`) or one of its physical indexes."""
    if isinstance(name, str) and looks_physical(name):
        index_name(name[:-_STAMP_CHARS])
        return name
    return index_name(name)


def slice_lock_name(alias: str, number: int, count: int) -> str:
    """The build-lock name of slice ``number`` of ``count`` of a sliced build of ``alias``."""
    return index_name(f"{index_name(alias)}.slice-{number}-of-{count}")
