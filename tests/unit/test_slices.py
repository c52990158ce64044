"""The slice rule of ``ceindex build --slice I/N``: deterministic, disjoint, and together the whole corpus."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from ceindex.cli import cli
from ceindex.config import BuildConfig
from ceindex.data.corpus import Document, Rejected, read_documents
from ceindex.data.slices import SliceSpec, parse_slice, slice_of
from ceindex.errors import ConfigError
from tests.conftest import REPO, SAMPLE


def test_parse_slice_accepts_i_of_n() -> None:
    assert parse_slice("2/4") == SliceSpec(2, 4)
    assert parse_slice(" 1 / 1 ") == SliceSpec(1, 1)
    assert str(parse_slice("3/3")) == "3/3" and parse_slice("3/3").key == "slice-3-of-3"


@pytest.mark.parametrize("text, reason", [("0/3", "numbered 1 to 3"), ("4/3", "numbered 1 to 3"), ("1/0", "1-1024"),
                                          ("3", "not I/N"), ("a/b", "not I/N"), ("-1/3", "not I/N"), ("", "not I/N"),
                                          ("1/5000", "1-1024")])
def test_parse_slice_refuses_what_is_not_a_slice(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_slice(text)
    with pytest.raises(ConfigError, match=reason):  # the setting is checked where it is made (file, flag or code)
        BuildConfig(slice=text)


def test_the_rule_is_pinned_so_every_machine_and_version_agrees() -> None:
    """A change of the rule would make old and new builders write different slices of one build: these values are
    sha256-derived, the same on every platform and Python (unlike hash(), which is salted per process)."""
    assert [slice_of(f"doc{i}", 0, 3) for i in range(10)] == [2, 1, 1, 1, 2, 3, 1, 2, 1, 1]
    assert slice_of("MED-10", 0, 4) == 4 and slice_of("d1", 0, 1000) == 367
    script = "from ceindex.data.slices import slice_of; print([slice_of(f'doc{i}', 0, 3) for i in range(10)])"
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert other.stdout.strip() == "[2, 1, 1, 1, 2, 3, 1, 2, 1, 1]"


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_slices_are_disjoint_cover_every_id_and_are_balanced(count: int) -> None:
    ids = [f"id-{i}" for i in range(20_000)] + ["", "é", "\U0001f600", "\ud800"]  # a lone surrogate has a slice too
    owners = {doc_id: [n for n in range(1, count + 1) if SliceSpec(n, count).holds(doc_id, 0)] for doc_id in ids}
    assert all(len(found) == 1 for found in owners.values()), "every id in exactly one slice"
    sizes = Counter(found[0] for found in owners.values())
    assert set(sizes) == set(range(1, count + 1))
    assert max(sizes.values()) - min(sizes.values()) < 0.06 * len(ids) / count


def test_rows_without_an_id_go_to_one_slice_by_line() -> None:
    assert [slice_of(None, line, 3) for line in range(1, 7)] == [2, 3, 1, 2, 3, 1]


def test_the_slices_of_a_corpus_are_its_rows_split_by_id_in_any_row_order() -> None:
    rows = [r for r in read_documents(SAMPLE / "corpus.jsonl") if isinstance(r, Document)]
    spec_rows = {n: {r.id for r in rows if SliceSpec(n, 3).holds(r.id, r.line)} for n in (1, 2, 3)}
    assert set().union(*spec_rows.values()) == {r.id for r in rows} and sum(map(len, spec_rows.values())) == len(rows)
    reordered = {n: {r.id for r in reversed(rows) if SliceSpec(n, 3).holds(r.id, 10_000 - r.line)} for n in (1, 2, 3)}
    assert reordered == spec_rows
    bad = Rejected("corpus.jsonl", 3, "not JSON")  # a row without an id belongs to one slice, by its line
    assert [SliceSpec(n, 3).holds(bad.id, bad.line) for n in (1, 2, 3)] == [True, False, False]


@pytest.mark.parametrize("args, message", [
    (["--slice", "4/3"], "numbered 1 to 3"),
    (["--slice", "2/3", "--finalize"], "--finalize finishes all the slices"),
    (["--slice", "2/3", "--prune"], "give --prune to the finalize"),
])
def test_cli_refuses_a_bad_slice_in_one_line(args: list[str], message: str, ceindex_home, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["build", "--data", str(SAMPLE), "--index", "x", *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_build_help_documents_slices_with_an_example_for_n_machines() -> None:
    result = CliRunner().invoke(cli, ["build", "--help"])
    assert "--slice I/4" in result.output and "--finalize" in result.output and "I/N" in result.output


def _meta(status: str, slices: int, **build) -> dict:
    from ceindex.backends.base import BuildState
    from ceindex.models.base import EncoderDescription
    encoder = EncoderDescription(kind="ce-layer", model="m", weights_sha256="0" * 64, dims=4, layer=1)
    meta = BuildState("docs-20260101t000000", "docs", encoder, "fp", status=status, slices=slices).to_meta()
    meta["build"].update(build)
    return meta


def test_prune_keeps_only_sliced_builds_still_loading() -> None:
    from ceindex.backends.base import BUILDING, COMPLETE, FAILED, prunable
    name = "docs-20260101t000000"
    assert not prunable(name, _meta(BUILDING, 3), "docs", set())  # its slices may still be writing
    assert prunable(name, _meta(FAILED, 3), "docs", set()) and prunable(name, _meta(COMPLETE, 3), "docs", set())
    assert prunable(name, _meta(BUILDING, 0), "docs", set())  # an unsliced build: its builder held the alias lock
    assert not prunable(name, _meta(FAILED, 3), "docs", {name}) and not prunable(name, _meta(FAILED, 0), "other", set())


def test_index_settings_are_recorded_and_a_build_recorded_without_them_still_reads() -> None:
    from ceindex.backends.base import BUILDING, BuildState, IndexSettings
    old = _meta(BUILDING, 2)
    assert "index_settings" not in old["build"] and BuildState.from_meta("docs-1", old).index_settings == {}
    recorded = IndexSettings(knn_m=32, shards=2).sliced_record()
    new = BuildState.from_meta("docs-1", _meta(BUILDING, 2, index_settings=recorded))
    assert new.index_settings == {"shards": 2, "knn_m": 32, "knn_ef_construction": 128}
    assert new.to_meta()["build"]["index_settings"] == new.index_settings
