"""Replace a file in one step: a reader (or a rerun after a crash) sees the old content or the new, never half."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, content: str) -> None:
    """Write ``content`` (UTF-8) to ``path`` through the sibling ``<name>.tmp`` and ``os.replace``.

    The temporary file sits in the same folder, so the replace is a rename within one file system (atomic on
    POSIX and Windows); a crash leaves at most a stale ``<name>.tmp``, which the next write overwrites.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
