"""The one write-temp-then-replace helper and the one title + text join (issue 12)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ceindex.data.beir import doc_text
from ceindex.data.corpus import Document, body_text
from ceindex.data.files import atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "twö")
    assert path.read_bytes() == "twö".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text(encoding="utf-8") == "old"


@pytest.mark.parametrize(("title", "text", "body"), [
    ("Photosynthesis", "Plants capture light.", "Photosynthesis Plants capture light."),
    ("", "  padded text \t", "  padded text \t"),  # no title: the text as it is
    (" Title ", " text ", "Title   text"),  # a title: joined by one space, then stripped
])
def test_body_text(title: str, text: str, body: str) -> None:
    assert body_text(title, text) == body
    assert Document(id="d", text=text, title=title).body == body
    assert doc_text({"_id": "d", "title": title, "text": text}) == body.strip()  # the BEIR readers strip as well
