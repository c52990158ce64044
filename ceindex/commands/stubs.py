"""Placeholders for subcommands whose issue is not built yet: they say so instead of failing obscurely."""
from __future__ import annotations

import click

from ceindex.errors import CeindexError

_PLANNED = {
    "search": "Hybrid search (BM25 + k-NN, fused) with cross-encoder re-ranking.",
    "serve": "HTTP JSON API over the search pipeline.",
    "eval": "ranx evaluation of retrieval systems against qrels.",
    "layers": "Find the cross-encoder layer whose hidden states embed best.",
    "distill": "Build a 2-layer dual encoder from the cross-encoder's first layers (DE-2 CE).",
}


def _stub(name: str, summary: str) -> click.Command:
    @click.command(name=name, help=f"{summary}\n\nNot available yet in this version of ceindex.",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise CeindexError(f"`ceindex {name}` is not implemented yet in this version ({summary})")

    return command


STUBS = {name: _stub(name, summary) for name, summary in _PLANNED.items()}
