"""BEIR reader, exact search and the layer sweep (on a tiny random cross-encoder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ceindex.commands.layers import layers_command, parse_layers
from ceindex.data.beir import read_corpus, read_qrels, read_queries
from ceindex.errors import ConfigError, InputError
from ceindex.layers import exact_search, run_layer_sweep
from tests.unit._tiny_models import build_tiny_ce, build_tiny_sentence_transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


DOCS = {
    "d1": ("Plants", "plant cells turn light into sugar"),
    "d2": ("", "a black hole is a star with gravity"),
    "d3": ("Sleep", "the brain needs sleep for memory"),
    "d4": ("Bees", "the bee and the bird and the sun"),
}
QUERIES = {"q1": "plant light sugar", "q2": "black hole gravity", "q3": "brain sleep", "q9": "no qrels"}
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t2\n"


def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, (title, text) in DOCS.items():
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for qid, text in QUERIES.items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(QRELS, encoding="utf-8")
    return folder


def test_beir_reader(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir")
    corpus = list(read_corpus(folder))
    assert corpus[1] == {"_id": "d2", "title": "", "text": "a black hole is a star with gravity"}
    assert read_queries(folder)["q9"] == "no qrels"
    assert read_qrels(folder, "test") == {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 2}}


def test_beir_reader_errors_name_file_and_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir")
    with open(folder / "corpus.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"_id": "d5", "text": \n')
    with pytest.raises(InputError, match=r"corpus.jsonl: line 5: malformed JSON"):
        list(read_corpus(folder))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"test.tsv: line 2: score 'yes' is not a number"):
        read_qrels(folder, "test")
    with pytest.raises(InputError, match="available splits: test"):
        read_qrels(folder, "dev")


def test_parse_layers() -> None:
    assert parse_layers("0-6") == [0, 1, 2, 3, 4, 5, 6]
    assert parse_layers("3,1, 1") == [1, 3]
    assert parse_layers("0-1,4") == [0, 1, 4]
    for bad in ("", "2-1", "a", "-1"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_exact_search_matches_brute_force_in_chunks() -> None:
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    doc_ids, qids = [f"d{i}" for i in range(50)], [f"q{i}" for i in range(7)]
    run = exact_search(queries, docs, qids, doc_ids, k=5, max_block=100)  # 2 queries per chunk
    for i, qid in enumerate(qids):
        expected = [doc_ids[j] for j in np.argsort(-(docs @ queries[i]))[:5]]
        assert list(run[qid]) == expected


def test_layer_sweep_and_cli(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "beir")
    model = build_tiny_ce("bert", tmp_path / "ce")
    baseline = build_tiny_sentence_transformer(tmp_path / "de")
    report = run_layer_sweep(str(model), data, "test", [0, 2], max_length=64, batch_size=2,
                             baseline=str(baseline), device="cpu", show_progress=False)
    assert [s.layer for s in report.layers] == [0, 2]
    assert (report.n_docs, report.n_queries) == (4, 3)  # q9 has no qrels
    assert set(report.layers[0].metrics) == {"ndcg@10", "mrr@10", "hit_rate@10", "recall@100"}
    assert report.layers[0].metrics["recall@100"] == 1.0  # 4 docs: everything is retrieved
    assert report.baseline is not None and report.baseline.model == str(baseline)
    assert set(report.baseline.metrics) == set(report.layers[0].metrics)
    json_path, png_path = report.write(tmp_path / "out")
    assert json.loads(json_path.read_text())["best_layer"] == report.best_layer
    assert png_path.read_bytes()[:4] == b"\x89PNG"

    result = CliRunner().invoke(layers_command, ["--model", str(model), "--data", str(data), "--layers", "0,1",
                                                 "--max-length", "64", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert [s["layer"] for s in json.loads(result.stdout)["layers"]] == [0, 1]
    result = CliRunner().invoke(layers_command, ["--model", str(model), "--data", str(data), "--layers", "1",
                                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "nDCG@10" in result.stdout and "best layer: 1" in result.stdout


# --- the sweep's numbers on a case small enough to work out by hand ------------------------------------------------
# Documents d1..d4 are the unit vectors e1..e4, so a query vector's components ARE its scores for d1..d4 and fix
# the ranking. Each query has one relevant document; at rank r it scores nDCG@10 = 1/log2(r + 1) and MRR = 1/r.
DOC_KEYWORDS = ("plant", "black hole", "brain", "bee")  # the word that tells d1..d4 apart in their texts
QUERY_SCORES = {  # layer -> query -> scores of d1..d4; (rank of the relevant document)
    0: {"q1": [3, 4, 2, 1], "q2": [3, 4, 2, 1], "q3": [4, 3, 1, 2]},  # d1 2nd, d2 1st, d3 4th
    1: {"q1": [4, 3, 2, 1], "q2": [3, 4, 2, 1], "q3": [2, 1, 4, 3]},  # all 1st
    2: {"q1": [2, 3, 4, 1], "q2": [1, 4, 3, 2], "q3": [1, 2, 3, 4]},  # d1 3rd, d2 1st, d3 2nd
    "baseline": {"q1": [4, 3, 2, 1], "q2": [4, 3, 2, 1], "q3": [2, 1, 4, 3]},  # 1st, 2nd, 1st
}
EXPECTED = {  # (nDCG@10, MRR@10), rounded to 4 places as the report rounds them
    0: ((1 / np.log2(3) + 1 + 1 / np.log2(5)) / 3, (1 / 2 + 1 + 1 / 4) / 3),  # 0.6872, 0.5833
    1: (1.0, 1.0),
    2: ((1 / np.log2(4) + 1 + 1 / np.log2(3)) / 3, (1 / 3 + 1 + 1 / 2) / 3),  # 0.7103, 0.6111
    "baseline": ((1 + 1 / np.log2(3) + 1) / 3, (1 + 1 / 2 + 1) / 3),  # 0.8770, 0.8333
}


def _vectors(texts, scores: dict[str, list[int]]) -> np.ndarray:
    by_text = {text: scores[qid] for qid, text in QUERIES.items() if qid in scores}
    rows = []
    for text in texts:
        if text in by_text:
            rows.append(by_text[text])
        else:
            rows.append([1.0 if keyword in text.lower() else 0.0 for keyword in DOC_KEYWORDS])
            assert sum(rows[-1]) == 1, f"document text {text!r} names no single keyword"
    return np.asarray(rows, dtype=np.float32)


class _FakeLayers:
    """Stands in for CrossEncoderLayers: the vectors above instead of a model."""

    def __init__(self, model: str, layers, **kwargs) -> None:
        self.layers, self.max_length, self.full_depth = sorted(set(layers)), kwargs["max_length"], 6

    def encode_layers(self, texts, **kwargs) -> dict[int, np.ndarray]:
        return {layer: _vectors(texts, QUERY_SCORES[layer]) for layer in self.layers}

    def weights_sha256(self) -> str:
        return "ce-sha"


class _FakeDual:
    """Stands in for DualEncoder (the baseline)."""

    def __init__(self, config) -> None:
        pass

    def encode(self, texts, **kwargs) -> np.ndarray:
        return _vectors(texts, QUERY_SCORES["baseline"])

    def describe(self):
        from types import SimpleNamespace

        return SimpleNamespace(weights_sha256="de-sha")


def test_layer_sweep_scores_a_hand_worked_case_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ceindex.models import ce_layer, dual

    monkeypatch.setattr(ce_layer, "CrossEncoderLayers", _FakeLayers)
    monkeypatch.setattr(dual, "DualEncoder", _FakeDual)
    data = write_beir(tmp_path / "beir")
    report = run_layer_sweep("fake-ce", data, "test", [2, 0, 1], max_length=64, baseline="fake-de",
                             device="cpu", show_progress=False)
    assert [s.layer for s in report.layers] == [0, 1, 2]
    for score in report.layers:
        ndcg, mrr = EXPECTED[score.layer]
        assert score.metrics == {"ndcg@10": round(ndcg, 4), "mrr@10": round(mrr, 4), "hit_rate@10": 1.0,
                                 "recall@100": 1.0}, score.layer
    assert [s.metrics["ndcg@10"] for s in report.layers] == [0.6872, 1.0, 0.7103]
    assert report.best_layer == 1  # the middle one: neither the first, the last, nor the deepest requested
    assert report.baseline is not None and report.baseline.weights_sha256 == "de-sha"
    assert report.baseline.metrics == {"ndcg@10": 0.877, "mrr@10": 0.8333, "hit_rate@10": 1.0, "recall@100": 1.0}
    assert (report.n_docs, report.n_queries, report.weights_sha256) == (4, 3, "ce-sha")
    json_path, _ = report.write(tmp_path / "out")
    written = json.loads(json_path.read_text())
    assert written["best_layer"] == 1 and written["layers"][0]["metrics"]["ndcg@10"] == 0.6872
