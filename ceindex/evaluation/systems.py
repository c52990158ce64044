"""Named retrieval systems: each is the search pipeline with some stages switched on or off."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ceindex.errors import ConfigError

BASES: dict[str, dict[str, Any]] = {
    "bm25": {"bm25": True, "knn": False},
    "knn": {"bm25": False, "knn": True},
    "hybrid-rrf": {"bm25": True, "knn": True, "fusion": "rrf"},
    "hybrid-minmax": {"bm25": True, "knn": True, "fusion": "minmax"},
}
RERANK_SUFFIX = "+rerank"
DEFAULT_SYSTEMS = "bm25,knn,hybrid-rrf,hybrid-minmax,hybrid-rrf+rerank"


@dataclass(frozen=True)
class System:
    name: str
    search: dict[str, Any] = field(default_factory=dict)  # SearchConfig changes


def parse_systems(spec: str) -> list[System]:
    """``bm25,knn,hybrid-rrf,hybrid-minmax`` each optionally with ``+rerank``."""
    systems = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        base, rerank = (raw[: -len(RERANK_SUFFIX)], True) if raw.endswith(RERANK_SUFFIX) else (raw, False)
        if base not in BASES:
            raise ConfigError(
                f"unknown system {raw!r}; systems are {', '.join(BASES)}, each optionally with '{RERANK_SUFFIX}'"
            )
        systems.append(System(raw, {**BASES[base], "rerank": rerank}))
    if not systems:
        raise ConfigError("no systems given (e.g. --systems bm25,knn,hybrid-rrf+rerank)")
    if len({s.name for s in systems}) != len(systems):
        raise ConfigError(f"--systems names a system twice: {spec}")
    return systems
