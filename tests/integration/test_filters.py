"""Filters and pages on both backends (embedded, and the real OpenSearch node): a 300-document corpus with planted
metadata; random filters; every hit matches; filtered k-NN equals exact search over the matching subset (also at
1% selectivity); pages concatenate to one deep query; server-side and client-side fusion agree under a filter;
typed values that do not fit are rejects; bad filters and pages are clear errors (also over HTTP)."""
from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from ceindex.backends import open_backend
from ceindex.config import BuildConfig, OpenSearchConfig, SearchConfig, Settings
from ceindex.errors import ConfigError, InputError
from ceindex.filters import check_metadata, matches, parse_field_types, parse_filter
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from search_pipeline import SearchPipeline
from search_pipeline.server import create_app
from ceindex.backends.detect import detect_engine
from tests.conftest import ALL_BACKEND_PARAMS, SAMPLE, cluster_url
from tests.serving import serving
from tests.unit.test_filter_language import random_filter

FIELDS = {"lang": "keyword", "year": "integer", "score": "double", "published": "date", "tags": "keyword[]",
          "open": "boolean", "bucket": "integer"}
TYPES = parse_field_types(FIELDS)
COUNT = 300
QUERIES = ("plants light energy glucose", "black hole gravity", "cells oxygen water", "battery lithium charge")
RARE = {"term": {"bucket": 7}}  # keeps 1% of the corpus (3 documents)


def planted_corpus(path: Path) -> list[dict[str, Any]]:
    """COUNT documents of sample-corpus words (so the tiny model knows them) with metadata planted from the id."""
    rng = random.Random(17)
    words = sorted(set(re.findall(r"[a-z]+", (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").lower())))
    rows = []
    for i in range(COUNT):
        row: dict[str, Any] = {
            "_id": f"d{i:03d}", "title": " ".join(rng.sample(words, 3)), "text": " ".join(rng.choices(words, k=20)),
            "lang": ["en", "en", "de", "fr", "es"][i % 5], "year": 1990 + (i * 7) % 30, "score": round(rng.random(), 3),
            "published": [f"20{(i * 3) % 20:02d}-0{1 + i % 9}-1{i % 10}", f"20{(i * 3) % 20:02d}-0{1 + i % 9}-1{i % 10}T0{i % 10}:30Z",
                          f"20{(i * 3) % 20:02d}-0{1 + i % 9}-1{i % 10}T0{i % 10}:30:15.250+02:00",
                          1_000_000_000_000 + i * 86_400_000][i % 4],  # every date form both stores read
            "tags": rng.sample(["a", "b", "c", "d", "e"], rng.randrange(3)), "open": i % 3 == 0, "bucket": i % 100,
        }
        if i % 11 == 0:
            del row["year"]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@pytest.fixture(scope="module", params=ALL_BACKEND_PARAMS)
def planted(request: pytest.FixtureRequest, tiny_ce_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, dict[str, Any]]]:
    home = tmp_path_factory.mktemp("filters")
    rows = planted_corpus(home / "corpus.jsonl")
    settings = Settings(index=f"f{uuid.uuid4().hex[:8]}", home=str(home),
                        encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64),
                        build=BuildConfig(fields=FIELDS),
                        search=SearchConfig(recall_n=40, rerank_top=10, rerank_max_length=64))
    url = cluster_url(request, request.param)
    if url:
        settings = replace(settings, opensearch=OpenSearchConfig(url=url))
    backend = open_backend(settings)
    try:
        summary = build_index(backend, load_encoder(settings.encoder), home / "corpus.jsonl", settings.index,
                              settings.build, rejects_path=home / "r.jsonl", progress=False)
    finally:
        backend.close()
    assert summary.published and summary.indexed == COUNT and summary.fields == dict(sorted(FIELDS.items()))
    metadata = {r["_id"]: check_metadata({k: v for k, v in r.items() if k in FIELDS}, TYPES)[0] for r in rows}
    return settings, metadata


def _pipeline(settings: Settings, **search: Any) -> SearchPipeline:
    return SearchPipeline(replace(settings, search=replace(settings.search, **search)))


def _matching(metadata: dict[str, dict[str, Any]], raw: Any) -> set[str]:
    parsed = parse_filter(raw, TYPES)
    return {doc_id for doc_id, meta in metadata.items() if matches(parsed, meta, TYPES)}


def test_every_hit_matches_random_filters(planted: tuple[Settings, dict]) -> None:
    settings, metadata = planted
    rng = random.Random(3)
    stages = {"bm25": _pipeline(settings, knn=False, rerank=False), "knn": _pipeline(settings, bm25=False, rerank=False),
              "hybrid": _pipeline(settings, rerank=False, server_fusion="off")}
    checked = 0
    for _ in range(25):
        raw = random_filter(rng)
        keep = _matching(metadata, raw)
        for stage, pipeline in stages.items():
            for result in pipeline.search_many(QUERIES[:2], k=20, filter=raw):
                ids = [h.id for h in result.hits]
                assert set(ids) <= keep, (stage, raw, set(ids) - keep)
                assert all(h.metadata is not None for h in result.hits)
                if stage == "knn":  # every matching document has a vector: never starved by the filter
                    assert len(ids) == min(20, len(keep)), (raw, len(ids), len(keep))
                checked += len(ids)
    assert checked > 500


def _brute_force(pipeline: SearchPipeline, query: str, doc_ids: list[str], texts: dict[str, str], k: int) -> list[tuple[str, float]]:
    qv = pipeline.query_encoder.encode([query])[0]
    dv = pipeline.query_encoder.encode([texts[d] for d in doc_ids])
    scores = dv @ qv
    order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], doc_ids[i]))[:k]
    return [(doc_ids[i], float(scores[i])) for i in order]


@pytest.mark.parametrize("raw", [RARE, {"term": {"lang": "de"}}, {"range": {"year": {"gte": 2005, "lt": 2015}}},
                                 {"all": [{"term": {"lang": "en"}}, {"not": {"term": {"open": True}}}]}])
def test_filtered_knn_equals_exact_search_over_the_matching_subset(planted: tuple[Settings, dict], raw: Any) -> None:
    settings, metadata = planted
    keep = sorted(_matching(metadata, raw))
    pipeline = _pipeline(settings, bm25=False, rerank=False)
    texts = {d: doc.body for d, doc in pipeline.backend.fetch(settings.index, keep).items()}
    for query in QUERIES:
        hits = pipeline.search(query, k=10, filter=raw).hits
        exact = _brute_force(pipeline, query, keep, texts, 10)
        assert len(hits) == len(exact) == min(10, len(keep))  # 1%: all 3 matching documents, not 0
        assert [h.knn_score for h in hits] == pytest.approx([s for _, s in exact], abs=1e-4)
        assert {h.id for h in hits} == {d for d, _ in exact} or _tied_at_the_cut(exact, keep, pipeline, query, texts)


def _tied_at_the_cut(exact: list[tuple[str, float]], keep: list[str], pipeline: SearchPipeline, query: str,
                     texts: dict[str, str]) -> bool:
    deeper = _brute_force(pipeline, query, keep, texts, len(exact) + 1)
    return len(deeper) > len(exact) and abs(deeper[-1][1] - deeper[-2][1]) < 1e-4


@pytest.mark.parametrize("rerank", [False, True])
@pytest.mark.parametrize("raw", [None, {"any": [{"term": {"lang": "en"}}, {"terms": {"tags": ["a"]}}]}])
def test_pages_concatenated_equal_one_deep_query(planted: tuple[Settings, dict], rerank: bool, raw: Any) -> None:
    settings, _ = planted
    pipeline = _pipeline(settings, rerank=rerank, server_fusion="off")
    for query in QUERIES[:2]:
        deep = [h.id for h in pipeline.search(query, k=35, filter=raw).hits]
        pages = [pipeline.search(query, k=7, offset=offset, filter=raw).hits for offset in range(0, 35, 7)]
        assert [h.id for page in pages for h in page] == deep
        assert [h.rank for page in pages for h in page] == list(range(1, len(deep) + 1))
        assert len(set(deep)) == len(deep) == 35


@pytest.mark.parametrize("fusion", ["rrf", "minmax"])
def test_server_and_client_fusion_agree_under_a_filter(planted: tuple[Settings, dict], fusion: str) -> None:
    settings, metadata = planted
    server = _pipeline(settings, fusion=fusion, rerank=False, server_fusion="auto")
    client = _pipeline(settings, fusion=fusion, rerank=False, server_fusion="off")
    if not settings.opensearch.url or detect_engine(settings.opensearch).name != "opensearch":
        assert not server.uses_server_fusion  # the embedded and Elasticsearch backends fuse in ceindex only
        return
    assert server.uses_server_fusion
    for raw in ({"term": {"lang": "de"}}, {"range": {"published": {"gte": "2010-01-01"}}}, RARE):
        keep = _matching(metadata, raw)
        for query in QUERIES:
            by_server = server.search(query, k=15, filter=raw).hits
            by_client = client.search(query, k=15, filter=raw).hits
            assert {h.id for h in by_server} <= keep
            assert [h.id for h in by_server] == [h.id for h in by_client], (raw, query)
            assert [h.fused_score for h in by_server] == pytest.approx([h.fused_score for h in by_client],
                                                                       rel=2e-4, abs=2e-5)


def test_bad_filters_and_pages_are_input_errors(planted: tuple[Settings, dict]) -> None:
    settings, _ = planted
    pipeline = _pipeline(settings, rerank=False, max_depth=50)
    with pytest.raises(InputError, match=r"unknown field 'country'; the index's filterable fields: bucket \(integer\)"):
        pipeline.search("x", filter={"term": {"country": "en"}})
    with pytest.raises(InputError, match="'2020-1-1' is not a date"):
        pipeline.search("x", filter={"range": {"published": {"gte": "2020-1-1"}}})
    with pytest.raises(InputError, match=r"offset \+ k = 51 is past the deepest page position, 50 \(search.max_depth"):
        pipeline.search("x", k=11, offset=40)
    with pytest.raises(InputError, match="offset must be an integer >= 0"):
        pipeline.search("x", offset=-1)
    with pytest.raises(ConfigError, match=r"search.max_depth must be <= 10000 \(the engines' result window\)"):
        _pipeline(settings, max_depth=10_001)
    assert pipeline.search("plants", k=10, offset=40).hits[0].rank == 41


def test_http_filter_and_offset(planted: tuple[Settings, dict]) -> None:
    settings, metadata = planted
    pipeline = _pipeline(settings, rerank=False, server_fusion="off")
    keep = _matching(metadata, {"term": {"lang": "fr"}})
    expected = [h.id for h in pipeline.search("plants light", k=10, offset=5, filter={"term": {"lang": "fr"}}).hits]
    with serving(create_app(pipeline)) as url:
        good = httpx.post(f"{url}/search", json={"query": "plants light", "k": 10, "offset": 5,
                                                 "filter": {"term": {"lang": "fr"}}}, timeout=60)
        assert good.status_code == 200, good.text
        hits = good.json()["results"][0]["hits"]
        assert [h["id"] for h in hits] == expected and {h["id"] for h in hits} <= keep and hits[0]["rank"] == 6
        for body, message in [
            ({"query": "x", "filter": {"term": {"country": "x"}}}, "unknown field 'country'"),
            ({"query": "x", "filter": {"range": {"lang": {"gte": 1}}}}, "range works on integer, double and date"),
            ({"query": "x", "k": 10, "offset": 995}, "past the deepest page position"),
        ]:
            response = httpx.post(f"{url}/search", json=body, timeout=60)
            assert response.status_code == 400 and message in response.json()["error"], response.text
        assert httpx.post(f"{url}/search", json={"query": "x", "offset": -1}, timeout=60).status_code == 422
        assert httpx.get(f"{url}/healthz", timeout=60).json()["fields"] == dict(sorted(FIELDS.items()))


@pytest.fixture()
def embedded_settings(tiny_ce_dir: Path, tmp_path: Path) -> Iterator[Settings]:
    yield Settings(index=f"t{uuid.uuid4().hex[:8]}", home=str(tmp_path / "home"),
                   encoder=EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64))


def test_values_that_do_not_fit_are_rejects_with_file_line_and_field(embedded_settings: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    rows = [{"_id": "a", "text": "plants light", "year": 2001}, {"_id": "b", "text": "plants", "year": "two"},
            {"_id": "c", "text": "light", "year": "2003"}, {"_id": "d", "text": "cells", "lang": ["en", "de"]}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = replace(embedded_settings, build=BuildConfig(fields={"year": "integer", "lang": "keyword"},
                                                            allow_rejects=True))
    backend = open_backend(settings)
    try:
        summary = build_index(backend, load_encoder(settings.encoder), corpus, settings.index, settings.build,
                              rejects_path=tmp_path / "r.jsonl", progress=False)
        pipeline = SearchPipeline(settings, backend)
        hits = pipeline.search("plants light", k=5, filter={"range": {"year": {"gte": 2002}}}).hits
    finally:
        backend.close()
    rejects = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"], r["id"]) for r in rejects] == [(str(corpus), 2, "b"), (str(corpus), 4, "d")]
    assert rejects[0]["reason"] == "field 'year' is not integer: expected an integer, got \"two\""
    assert summary.indexed == 2 and summary.rejects_by_reason == {"field 'year' is not integer": 1,
                                                                  "field 'lang' is not keyword": 1}
    assert [h.id for h in hits] == ["c"] and hits[0].metadata == {"year": 2003}  # the CSV-style "2003" is a number


def test_a_resume_with_other_fields_does_not_mix(embedded_settings: Settings, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": "plants light", "year": 2000 + i}) + "\n"
                              for i in range(6)), encoding="utf-8")
    backend = open_backend(embedded_settings)
    encoder = load_encoder(embedded_settings.encoder)
    alias = embedded_settings.index

    def build(fields: dict[str, str]) -> Any:
        return build_index(backend, encoder, corpus, alias, BuildConfig(fields=fields, encode_batch_docs=2),
                           rejects_path=tmp_path / "r.jsonl", progress=False)

    class Crash(Exception):
        pass

    def crash(*_: Any) -> None:
        raise Crash()

    try:
        with monkeypatch.context() as patch:  # every batch committed, then the process dies before the seal
            patch.setattr(backend, "seal", crash)
            with pytest.raises(Crash):
                build({"year": "integer"})
        (unfinished, meta), = backend.build_metas(alias).items()
        assert meta["fields"] == {"year": "integer"} and meta["build"]["committed"] == 6
        other = build({"year": "double"})  # other types: a new build, nothing resumed
        assert other.physical != unfinished and other.resumed_from == 0 and other.encoded == 6
        same = build({"year": "integer"})  # the same types: the unfinished build resumes
        assert same.physical == unfinished and same.resumed_from == 6 and same.encoded == 0
        assert backend.info(alias).fields == {"year": "integer"}
    finally:
        backend.close()


def test_fields_are_inferred_and_printed_by_the_build_command(tiny_ce_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from ceindex.cli import cli

    monkeypatch.setenv("CEINDEX_HOME", str(tmp_path / "home"))
    rows = planted_corpus(tmp_path / "c.jsonl")[:40]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["build", "--corpus", str(tmp_path / "c.jsonl"), "--index", "inf", "--encoder",
            f"ce:{tiny_ce_dir},layer=1", "--max-length", "64", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert ("filterable fields (inferred from the first rows; pin them with these flags or build.fields): "
            "--field bucket=integer --field lang=keyword --field open=boolean "
            "--field score=double --field tags=keyword[] --field year=integer") in result.output
    # the planted dates mix text and epoch-ms integers: inference leaves the field untyped and says why
    assert "field published left untyped (not filterable): mixed kinds in the sample (date, integer)" in result.output
    result = CliRunner().invoke(cli, [*args, "--index", "pinned", "--field", "lang=keyword", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["fields"] == {"lang": "keyword"} and not summary["fields_inferred"]
