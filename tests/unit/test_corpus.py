from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ceindex.data.corpus import Document, Rejected, corpus_path, read_documents
from ceindex.errors import InputError


def _split(records):
    records = list(records)
    return [r for r in records if isinstance(r, Document)], [r for r in records if isinstance(r, Rejected)]


def test_jsonl_good_and_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"_id": "a", "title": "T", "text": "alpha", "metadata": {"year": 2020}}),
            "{not json",
            json.dumps({"title": "no id", "text": "x"}),
            json.dumps({"_id": "b", "text": "   "}),
            json.dumps({"_id": "c", "text": 5}),
            json.dumps(["list"]),
            json.dumps({"_id": 7, "text": "beta"}),
        ]) + "\n"
    )
    good, bad = _split(read_documents(path))
    assert [(d.id, d.line) for d in good] == [("a", 1), ("7", 7)]
    assert good[0].metadata == {"year": 2020} and good[0].body == "T alpha"
    assert [(r.line, r.reason.split(":")[0]) for r in bad] == [
        (2, "malformed JSON"), (3, "missing id field '_id'"), (4, "empty text"),
        (5, "text field 'text' must be a string, got int"), (6, "expected a JSON object, got list"),
    ]
    assert all(r.source == str(path) for r in bad)


def test_csv_tsv_and_gzip_with_custom_fields(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('id,body,extra\n1,"hello, world",x\n2,too,many,cols\n3,bye,y\n')
    good, bad = _split(read_documents(csv_path, id_field="id", text_field="body"))
    assert [(d.id, d.text, d.metadata) for d in good] == [("1", "hello, world", {"extra": "x"}), ("3", "bye", {"extra": "y"})]
    assert bad[0].line == 3 and "4 columns" in bad[0].reason
    tsv_gz = tmp_path / "c.tsv.gz"
    with gzip.open(tsv_gz, "wt", encoding="utf-8") as handle:
        handle.write("_id\ttext\nx\tone\ny\ttwo\n")
    good, bad = _split(read_documents(tsv_gz))
    assert [d.id for d in good] == ["x", "y"] and not bad


def test_corpus_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exactly one"):
        corpus_path(None, None)
    with pytest.raises(InputError, match="no corpus.jsonl"):
        corpus_path(tmp_path, None)
    with pytest.raises(InputError, match="does not exist"):
        corpus_path(None, tmp_path / "nope.jsonl")
    bad = tmp_path / "c.xml"
    bad.write_text("<x/>")
    with pytest.raises(InputError, match="cannot tell the format"):
        list(read_documents(bad))
