"""The CLI end to end: build, search, eval (incl. re-rank-only), with --json; build/search/eval on both backends."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from ceindex.cli import cli
from tests.conftest import ALL_BACKEND_PARAMS, SAMPLE, cluster_url


@pytest.fixture()
def run(ceindex_home: Path, tiny_ce_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CEINDEX_CE_MODEL", str(tiny_ce_dir))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


@pytest.fixture(params=ALL_BACKEND_PARAMS)
def target(request: pytest.FixtureRequest) -> list[str]:
    """The flags that pick the backend, and a fresh index name (the OpenSearch node is shared by the session)."""
    index = ["--index", f"cli-{uuid.uuid4().hex[:8]}"]
    url = cluster_url(request, request.param)
    if url:  # --cluster detects the engine; --opensearch stays as its old name
        return ["--cluster" if request.param == "elasticsearch" else "--opensearch", url, *index]
    return index


def test_build_search_eval(run, target: list[str], tmp_path: Path) -> None:
    built = json.loads(run("-q", "build", *target, "--data", str(SAMPLE), "--max-length", "64",
                           "--json", "--no-progress").stdout)
    assert built["indexed"] == 30 and built["count_ok"] is True and built["published"] is True
    assert built["assembler_fallback_batches"] == 0  # the tiny BERT tokenizer is mirrored: no slow path
    hits = json.loads(run("-q", "search", *target, "--k", "3", "--rerank-max-length", "64", "--json",
                          "battery").stdout)
    assert len(hits[0]["hits"]) == 3 and hits[0]["query"] == "battery"
    bm25 = json.loads(run("-q", "search", *target, "--k", "1", "--no-knn", "--no-rerank", "--json",
                          "lithium ions battery").stdout)
    assert bm25[0]["hits"][0]["id"] == "d21"  # the one battery document, found by its words on either backend
    text = run("-q", "search", *target, "--no-rerank", "volcano").stdout
    assert "rank" in text and "timings (ms)" in text
    out = tmp_path / "report"
    report = json.loads(run("-q", "eval", *target, "--data", str(SAMPLE), "--systems", "bm25,knn",
                            "--out", str(out), "--json", "--no-progress").stdout)
    assert report["systems"] == ["bm25", "knn"] and report["queries"] == 10
    assert report["provenance"]["encoder"]["layer"] == 1
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "runs", "chart.png", "report.html"}


def test_rerank_only_mode_without_an_index(run, tmp_path: Path) -> None:
    candidates = tmp_path / "cand.trec"
    candidates.write_text("".join(f"q1 Q0 d{i:02d} {i} {30 - i} bm25\n" for i in range(1, 11)))
    report = json.loads(run("-q", "eval", "--data", str(SAMPLE), "--index", "none-built", "--candidates",
                            str(candidates), "--rerank-top", "5", "--rerank-max-length", "64", "--json",
                            "--no-progress").stdout)
    assert report["systems"] == ["candidates", "candidates+rerank"]
    assert report["unjudged_queries"] == 0


def test_build_rejects_exit_status_and_message(run, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "cat"}\n{"_id": "b"}\n')
    result = run("-q", "build", "--corpus", str(corpus), "--index", "rej", "--max-length", "64", "--no-progress", code=1)
    assert "rejected 1: missing text field 'text'" in result.stdout
    run("-q", "build", "--corpus", str(corpus), "--index", "rej", "--max-length", "64", "--no-progress",
        "--allow-rejects")


def test_errors_are_one_line_with_exit_2(run) -> None:
    result = run("search", "--index", "nothing-here", "query", code=2)
    assert "error: no embedded index named 'nothing-here'" in result.output
    result = run("build", "--index", "x", code=2)
    assert "error: give exactly one of --data DIR" in result.output


# every real subcommand and the start of the purpose its help states: a lost registration fails here
SUBCOMMANDS = {
    "build": "Read a corpus, embed every document, and write BM25 text plus its vector into an index.",
    "config": "Print the configuration keys, their defaults and the flag that overrides each.",
    "search": "Search an index: BM25 + k-NN recall, fusion, then cross-encoder re-ranking.",
    "serve": "Serve an index over HTTP so apps in any language can search it.",
    "eval": "Score retrieval systems against relevance judgements with ranx.",
    "layers": "Score every layer of a cross-encoder as a first-stage embedder",
    "distill": "Turn a cross-encoder into a small, fast dual encoder",
}


def test_help_texts(run) -> None:
    assert set(cli.commands) == set(SUBCOMMANDS)
    listed = run("--help").stdout
    for command, purpose in SUBCOMMANDS.items():
        assert f"\n  {command} " in listed, f"`ceindex --help` does not list {command}"
        text = " ".join(run(command, "--help").stdout.split())
        assert text.split()[:3:2] == ["Usage:", command] and purpose in text, text


def test_fusion_tuned_on_a_split_is_written_as_a_config_that_search_serves(
    run, target: list[str], tmp_path: Path
) -> None:
    """On OpenSearch the tuned row and search fuse inside the node (hybrid query); the tuner ranked the two recall
    lists with ceindex's fusion code: the same ranking and score either way."""
    run("-q", "build", *target, "--data", str(SAMPLE), "--max-length", "64", "--no-progress")
    written, out = tmp_path / "tuned.yaml", tmp_path / "report"
    report = json.loads(run("-q", "eval", *target, "--data", str(SAMPLE), "--systems", "hybrid-minmax",
                            "--tune-fusion-on", "test", "--write-config", str(written), "--out", str(out), "--json",
                            "--no-progress").stdout)
    assert report["systems"] == ["hybrid-minmax", "tuned"] and report["files"]["config"] == str(written)
    tuning = report["fusion_tuning"]
    # tuned on the very queries it is scored on: the tuned row scores what the tuner found, at least the untuned
    assert report["scores"]["tuned"]["ndcg@10"] == pytest.approx(tuning["served_score"], abs=1e-9)
    assert tuning["served_score"] >= max(tuning["configured_score"], tuning["bm25_alone"])
    assert tuning["verdict"].startswith("k-NN helps on test" if tuning["knn_helps"] else "k-NN does not help on test")
    # search with the written config returns the tuned run's ranking
    query_id, query = next((json.loads(line)["_id"], json.loads(line)["text"])
                           for line in (SAMPLE / "queries.jsonl").read_text().splitlines())
    hits = json.loads(run("-q", "search", "--config", str(written), "--no-rerank", "--json", query).stdout)[0]["hits"]
    trec = [line.split() for line in (out / "runs" / "tuned.trec").read_text().splitlines()]
    assert [h["id"] for h in hits] == [row[2] for row in trec if row[0] == query_id][:10]


def test_eval_bad_requests_are_clear(run, tmp_path: Path) -> None:
    result = run("eval", "--data", str(SAMPLE), "--systems", "", code=2)
    assert "nothing to evaluate" in result.output
    result = run("eval", "--data", str(SAMPLE), "--systems", "dense", code=2)
    assert "unknown system 'dense'" in result.output
    extra = tmp_path / "mine.trec"
    extra.write_text("q1 Q0 d01 1 2.0 mine\n")
    result = run("eval", "--data", str(SAMPLE), "--systems", "", "--runs", str(extra), "--baseline", "bm25", code=2)
    assert "--baseline 'bm25' is not one of: mine" in result.output
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d01\n")
    result = run("eval", "--data", str(SAMPLE), "--systems", "", "--runs", str(bad), code=2)
    assert "not a TREC run file" in result.output
