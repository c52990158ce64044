"""Distillation's training sources (qrels, triples files, label-free corpus), the dual-encoder teacher and its cache,
the random-init arm and the time budget. Tiny random models and in-test data only."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ceindex.data.corpus import Rejected
from ceindex.data.triples import Triple, read_triples
from ceindex.distill import teacher_de
from ceindex.distill.config import StudentConfig
from ceindex.distill.data import SourceSpec, load_sources, specs_from
from ceindex.distill.init import build_student
from ceindex.distill.train import META_FILE, WORK, distill
from ceindex.errors import ConfigError, InputError
from tests.unit._tiny_models import build_tiny_sentence_transformer
from tests.unit.test_distill import TOPICS, tiny_train, write_dataset


def write_triples(path: Path, rows: list[str], sources: list[str] | None = None) -> Path:
    data = ("\n".join(rows) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    if sources is not None:
        stem = path.name.split(".")[0]
        (path.parent / f"{stem}.source.gz").write_bytes(gzip.compress(("\n".join(sources) + "\n").encode("utf-8")))
    return path


def topic_triples(n: int = 6) -> tuple[list[str], list[str]]:
    """``query<TAB>positive<TAB>negative`` rows about the test topics, with a source name per row."""
    rows, sources = [], []
    names = list(TOPICS)
    for t, (topic, words) in enumerate(TOPICS.items()):
        other = TOPICS[names[(t + 1) % len(names)]]
        for i in range(n):
            rows.append(f"{topic} {words.split()[i % 4]} {i}\t{topic} {words} note {i}\t{other} unrelated {i}")
            sources.append("alpha" if t % 2 else "beta")
    return rows, sources


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("sources-data"))


# --------------------------------------------------------------------------- the triples reader
def test_bad_triples_rows_are_rejected_with_file_and_line_and_good_rows_kept(tmp_path: Path) -> None:
    path = write_triples(tmp_path / "t.tsv", [
        "q one\tpos one\tneg one",
        "only one column",
        "q two\t\tneg",
        "q three\tpos three",
        "\tpos\tneg",
        "q four\tsame\tsame",
    ])
    (tmp_path / "bad.jsonl").write_bytes(b'{"query": "q", "positive": "p", "negative": ["n1", "n2"]}\n'
                                         b'{"query": 3, "positive": "p"}\n[1, 2]\n{broken\n\xff\xfe\n')
    rows = list(read_triples(path))
    good = [r for r in rows if isinstance(r, Triple)]
    bad = {r.line: r.reason for r in rows if isinstance(r, Rejected)}
    assert [(g.query, g.negatives, g.line) for g in good] == [("q one", ["neg one"], 1), ("q three", [], 4)]
    assert set(bad) == {2, 3, 5, 6} and "1 tab-separated column" in bad[2] and "empty positive" in bad[3]
    assert "empty query" in bad[5] and "also given as a negative" in bad[6]
    assert all(r.source == str(path) for r in rows if isinstance(r, Rejected))
    jrows = list(read_triples(tmp_path / "bad.jsonl"))
    assert isinstance(jrows[0], Triple) and jrows[0].negatives == ["n1", "n2"]
    assert [(r.line, r.reason.split(":")[0]) for r in jrows[1:]] == [
        (2, 'needs string fields "query" and "positive"'), (3, "expected a JSON object, got list"),
        (4, "malformed JSON"), (5, "not valid UTF-8 (byte 0xff at column 1)")]


def test_a_triples_source_with_rejects_keeps_the_good_rows_and_records_them(tmp_path: Path) -> None:
    rows, sources = topic_triples()
    path = write_triples(tmp_path / "mix.tsv.gz", rows[:10] + ["broken row"] + rows[10:], sources[:10] + ["x"] + sources[10:])
    data = load_sources([SourceSpec("triples", str(path))], held_out=0.0, seed=1)
    record = data.sources[0]
    assert record["rows"] == len(rows) and record["rejected"] == 1
    assert record["rejects"] == [{"source": str(path), "line": 11, "id": None,
                                  "reason": "has 1 tab-separated column(s); expected query<TAB>positive[<TAB>negative...]"}]
    assert len(data.triples) == len(rows) and not data.pseudo_queries


def test_dropping_a_source_by_the_parallel_source_file(tmp_path: Path) -> None:
    rows, sources = topic_triples()
    path = write_triples(tmp_path / "mix.tsv.gz", rows, sources)
    spec = specs_from(None, "train", str(path), "alpha", None, 0, 0)[0]
    data = load_sources([spec], held_out=0.0, seed=1)
    assert data.sources[0]["dropped_by_source"] == sources.count("alpha")
    kept = {data.queries[q] for q, _, _ in data.triples}
    assert kept == {r.split("\t")[0] for r, s in zip(rows, sources) if s == "beta"}


def test_specs_from_flags() -> None:
    specs = specs_from("beir", "none", "a.tsv, b.jsonl", "x", "docs.jsonl", 100, 50)
    assert [(s.kind, s.path, s.limit) for s in specs] == [
        ("corpus", "beir", 50), ("triples", "a.tsv", 100), ("triples", "b.jsonl", 100), ("corpus", "docs.jsonl", 50)]
    assert specs_from("beir", "train", None, None, None, 0, 0) == [SourceSpec("qrels", "beir", "train")]
    with pytest.raises(InputError, match="no training source"):
        load_sources([], held_out=0.1, seed=1)


# --------------------------------------------------------------------------- label-free
def test_label_free_pseudo_queries_come_from_the_corpus_and_never_from_qrels(dataset: Path) -> None:
    data = load_sources(specs_from(str(dataset), "none", None, None, None, 0, 0), held_out=0.2, seed=3)
    corpus = [json.loads(line) for line in (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    real_queries = {json.loads(line)["text"] for line in (dataset / "queries.jsonl").read_text(encoding="utf-8").splitlines()}
    bodies = {f"{d['title']} {d['text']}" for d in corpus}
    assert data.queries and set(data.queries) == data.pseudo_queries
    for qid, text in data.queries.items():
        assert text not in real_queries
        (source,) = data.judged[qid]
        assert data.docs[source] in bodies and text in data.docs[source]  # cut from its own document
        assert source in data.doc_ids and source in data.relevant[qid]
    for qid, positive, negative in data.triples:
        assert negative not in data.relevant[qid] and data.queries[qid] not in data.docs[positive]
        assert positive not in data.doc_ids  # passages cut from documents are trained on, never searched
    # held out by document: no held-out query's document gives a training query
    held_docs = {d for q in data.held_out for d in data.judged[q]}
    assert held_docs and not held_docs & {d for q, _, _ in data.triples for d in data.judged[q]}
    assert data.sources[0]["by_kind"]["title"] > 0 and data.sources[0]["kind"] == "corpus"
    assert "qrels_sha256" not in data.sources[0]


def test_a_query_in_two_sources_is_held_out_in_both(dataset: Path, tmp_path: Path) -> None:
    queries = {json.loads(line)["_id"]: json.loads(line)["text"]
               for line in (dataset / "queries.jsonl").read_text(encoding="utf-8").splitlines()}
    rows = [f"{text}\tsome passage about {qid}\tanother passage {qid}" for qid, text in queries.items()]
    path = write_triples(tmp_path / "same.tsv", rows)
    data = load_sources([SourceSpec("qrels", str(dataset)), SourceSpec("triples", str(path))], held_out=0.25, seed=5)
    assert len(data.queries) == len(queries)  # one id per query text, whichever source it came from
    trained = {q for q, _, _ in data.triples}
    assert data.held_out and not trained & set(data.held_out)
    assert {len(data.relevant[q]) for q in data.queries} == {2}  # the qrels document and the file's passage


def test_label_free_training_with_the_ce_teacher_lowers_the_loss(tiny_ce_dir: Path, dataset: Path, tmp_path: Path) -> None:
    train = tiny_train(dataset, data_dir=None, corpus=str(dataset / "corpus.jsonl"), epochs=2, held_out=0.1)
    meta = distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "lf", teacher_model=str(tiny_ce_dir),
                   progress=False).metadata
    losses = [e["loss"] for e in meta["epochs"]]
    assert losses[-1] < losses[0]
    data = meta["training_data"]
    assert data["sources"][0]["kind"] == "corpus" and data["pseudo_query_triples"] == data["triples"] > 0
    assert data["qrels_sha256"] is None and data["split"] is None


# --------------------------------------------------------------------------- teachers, arms and the budget
def test_de_teacher_vectors_are_cached_and_shared_by_the_arms(tiny_ce_dir: Path, dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = build_tiny_sentence_transformer(tmp_path / "teacher")
    calls: list[int] = []
    real = teacher_de._encode

    def counting(model: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
        calls.append(len(texts))
        return real(model, texts, max_length, batch_size)

    monkeypatch.setattr(teacher_de, "_encode", counting)
    train = tiny_train(dataset, teacher=False, teacher_de=str(teacher), de_weight=1.0, epochs=2)
    cache = tmp_path / "cache"
    first = distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "ce-init", progress=False, cache_dir=cache)
    assert len(calls) == 2  # queries and documents, once each
    de_losses = [e["de_loss"] for e in first.metadata["epochs"]]
    assert de_losses[-1] < de_losses[0]
    assert "DE teacher" in first.metadata["loss"] and first.metadata["teacher_de"]["model"] == str(teacher)
    arm = distill(StudentConfig(str(tiny_ce_dir), copy=0, random_init=True), train, tmp_path / "random",
                  progress=False, cache_dir=cache)
    assert len(calls) == 2, "the second arm must read the teacher's vectors from the cache"
    assert arm.metadata["student"]["copied_other"] == [] and arm.metadata["student"]["copied_layers"] == []
    assert len(list(cache.glob("teacher-de-*.keys.json"))) == 2  # queries and documents: two max lengths


def test_a_de_teacher_with_weight_0_is_not_recorded(tiny_ce_dir: Path, dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = build_tiny_sentence_transformer(tmp_path / "teacher")
    monkeypatch.setattr(teacher_de, "_encode", lambda *a: pytest.fail("a weight-0 teacher must not embed"))
    train = tiny_train(dataset, teacher=False, teacher_de=str(teacher), de_weight=0.0, epochs=1)
    meta = distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "out", progress=False).metadata
    assert meta["teacher_de"] is None and "DE teacher" not in meta["loss"]


def test_a_teacher_of_another_width_is_refused_before_it_embeds_anything(
        tiny_ce_dir: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = build_tiny_sentence_transformer(tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    (teacher / "config.json").write_text(json.dumps(config | {"hidden_size": 48}), encoding="utf-8")
    monkeypatch.setattr(teacher_de, "_encode", lambda *a: pytest.fail("embedded before checking the width"))
    train = tiny_train(dataset, teacher=False, teacher_de=str(teacher))
    with pytest.raises(ConfigError, match="48-dimensional vectors but the student has 32"):
        distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "o", progress=False)


def test_random_init_copies_nothing(tiny_ce_dir: Path) -> None:
    from transformers import AutoModel

    ce = AutoModel.from_pretrained(str(tiny_ce_dir))
    student, _, info = build_student(StudentConfig(str(tiny_ce_dir), copy=0, random_init=True))
    assert not torch.equal(student.embeddings.word_embeddings.weight, ce.embeddings.word_embeddings.weight)
    assert info.copied_other == [] and info.copied_layers == [] and "embeddings.word_embeddings.weight" in info.random_other
    with pytest.raises(ConfigError, match="copies nothing"):
        StudentConfig(str(tiny_ce_dir), copy=1, random_init=True)


def test_time_budget_writes_the_best_model_so_far_and_a_rerun_continues(tiny_ce_dir: Path, dataset: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "budget"
    student = StudentConfig(str(tiny_ce_dir))
    cut = distill(student, tiny_train(dataset, epochs=2, batch_size=4, max_minutes=1e-6), out,
                  teacher_model=str(tiny_ce_dir), progress=False)
    meta = cut.metadata
    assert meta["complete"] is False and meta["epochs"][0]["partial"] and meta["epochs"][0]["steps"] == 1
    assert (out / "model.safetensors").is_file() and (out / WORK).is_dir()
    state = json.loads((out / WORK / "state.json").read_text(encoding="utf-8"))
    assert state["epochs_done"] == 0 and state["epoch_steps_done"] == 1
    done = distill(student, tiny_train(dataset, epochs=2, batch_size=4), out, teacher_model=str(tiny_ce_dir),
                   progress=False)
    assert done.metadata["complete"] is True and not (out / WORK).exists()
    records = done.metadata["epochs"]
    assert [(r["epoch"], r["partial"]) for r in records] == [(1, True), (1, False), (2, False)]
    assert records[1]["first_step"] == 1
    best = [r for r in records if r["held_out"]["ndcg@10"] == max(x["held_out"]["ndcg@10"] for x in records)][-1]
    assert done.metadata["held_out_metrics"] == best["held_out"] or done.metadata["best_epoch"] == best["epoch"]
    assert len(json.loads((out / META_FILE).read_text(encoding="utf-8"))["epochs"]) == 3


def test_teacher_caches_compute_only_what_no_earlier_run_computed(tmp_path: Path) -> None:
    from ceindex.distill.cache import ScoreStore, VectorStore, text_key

    asked: list[list[int]] = []

    def scores(missing: list[int]) -> np.ndarray:
        asked.append(missing)
        return np.array([float(i) for i in missing])

    first = ScoreStore(tmp_path, "ce").get_or_compute([text_key("q", "a"), text_key("q", "b")], scores)
    second = ScoreStore(tmp_path, "ce").get_or_compute([text_key("q", "b"), text_key("q", "c")], scores)
    assert asked == [[0, 1], [1]] and first.tolist() == [0.0, 1.0] and second.tolist() == [1.0, 1.0]
    vectors = VectorStore(tmp_path, "de")
    got = vectors.get_or_compute(["x", "y"], lambda m: np.eye(2, dtype=np.float32)[m])
    again = VectorStore(tmp_path, "de").get_or_compute(["y", "z", "x"], lambda m: np.full((len(m), 2), 7, np.float32))
    assert got.tolist() == [[1, 0], [0, 1]] and again.tolist() == [[0, 1], [7, 7], [1, 0]]
    (tmp_path / "de.keys.json").write_text('["x"]', encoding="utf-8")  # rows and keys disagree: recompute
    assert VectorStore(tmp_path, "de").get_or_compute(["x"], lambda m: np.zeros((1, 2), np.float32)).tolist() == [[0, 0]]


def test_a_stray_cr_keeps_the_row_and_its_source_and_mismatched_source_files_are_refused(tmp_path: Path) -> None:
    path = write_triples(tmp_path / "t.tsv", ["q1\tp1 has\ra lone cr\tn1", "q2\tp2\tn2\t\t"])
    (tmp_path / "t.source").write_bytes(b"\xef\xbb\xbfalpha\nbeta\n")
    rows = list(read_triples(path))
    assert [(r.query, r.negatives, r.source, r.line) for r in rows] == [
        ("q1", ["n1"], "alpha", 1), ("q2", ["n2"], "beta", 2)]
    (tmp_path / "t.source").write_text("alpha\n", encoding="utf-8")
    with pytest.raises(InputError, match="fewer lines than"):
        list(read_triples(path))
    (tmp_path / "t.source").write_text("alpha\nbeta\ngamma\n", encoding="utf-8")
    with pytest.raises(InputError, match="more lines than"):
        list(read_triples(path))
    header = write_triples(tmp_path / "h.tsv", ["query\tpositive\tnegative", "q\tp\tn"])
    assert [r.query for r in read_triples(header)] == ["q"]


def test_an_unknown_dropped_source_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    rows, sources = topic_triples()
    path = write_triples(tmp_path / "mix.tsv.gz", rows, sources)
    with pytest.raises(InputError, match="scifact_typo, which no row comes from; the sources in the file are: alpha, beta"):
        load_sources(specs_from(None, "train", str(path), "alpha,scifact_typo", None, 0, 0), held_out=0.0, seed=1)


def test_rows_without_a_usable_negative_get_a_mined_one(tmp_path: Path) -> None:
    path = write_triples(tmp_path / "t.tsv", [
        "plant sugar\tplant light sugar energy\tblack hole star",
        "plant sugar\tsugar plant cell\t",  # no negative on this row although the query has one elsewhere
        "bee bird\tbee bird sun plant\tplant light sugar energy",
        "oxygen water\toxygen water carbon\toxygen water carbon dioxide",
        "oxygen water\toxygen water carbon dioxide\tbattery ion",  # the negative above is a positive here
        "battery ion\tbattery ion carbon energy\tvolcano earth",
    ])
    data = load_sources([SourceSpec("triples", str(path))], held_out=0.0, seed=1)
    pairs = {(data.queries[q], data.docs[p]) for q, p, _ in data.triples}
    assert ("plant sugar", "sugar plant cell") in pairs and ("oxygen water", "oxygen water carbon") in pairs
    assert data.sources[0]["rows_negative_mined"] == 2 and len(pairs) == 6


def test_training_on_a_triples_file_lowers_the_loss(tiny_ce_dir: Path, tmp_path: Path) -> None:
    rows, sources = topic_triples(8)
    path = write_triples(tmp_path / "mix.tsv", rows, None)
    train = tiny_train(tmp_path, data_dir=None, triples=str(path), teacher=False, epochs=3, held_out=0.1)
    meta = distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "t", progress=False).metadata
    losses = [e["loss"] for e in meta["epochs"]]
    assert losses[-1] < losses[0] and meta["training_data"]["sources"][0]["kind"] == "triples"


def test_ce_teacher_scores_are_reused_by_another_run(tiny_ce_dir: Path, dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ceindex.distill import teacher

    scored: list[int] = []
    real = teacher._score_with_progress

    def counting(reranker, pairs, batch_size):  # type: ignore[no-untyped-def]
        scored.append(len(pairs))
        return real(reranker, pairs, batch_size)

    monkeypatch.setattr(teacher, "_score_with_progress", counting)
    cache = tmp_path / "cache"
    train = tiny_train(dataset, epochs=1)
    distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "a", teacher_model=str(tiny_ce_dir), progress=False,
            cache_dir=cache)
    first = sum(scored)
    distill(StudentConfig(str(tiny_ce_dir), copy=0), train, tmp_path / "b", teacher_model=str(tiny_ce_dir),
            progress=False, cache_dir=cache)
    assert first > 0 and sum(scored) == first  # the second arm scored nothing
