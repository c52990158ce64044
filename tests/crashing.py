"""Test helper: a backend whose ``write`` raises on its n-th batch, as a builder killed mid-build would stop."""
from __future__ import annotations

from typing import Any


def crash_on_write(backend: Any, at: int, error: type[Exception]) -> None:
    """Make ``backend.write`` raise ``error`` on its ``at``-th call; the calls before it write (and commit)."""
    real_write, writes = backend.write, []

    def crashing_write(state, docs, vectors):
        writes.append(len(docs))
        if len(writes) == at:
            raise error("simulated crash")
        return real_write(state, docs, vectors)

    backend.write = crashing_write
