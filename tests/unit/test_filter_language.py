"""The filter language and typed fields: parsing and its errors, value checks (build rejects), inference, the
query-DSL translation, the embedded store's field columns (checked against the reference ``matches`` on random
filters), and the windowed re-rank order that keeps pages stable."""
from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from ceindex.backends.columns import FieldColumns
from ceindex.backends.query_dsl import filter_clause, knn_query, match_query
from ceindex.errors import ConfigError, InputError
from ceindex.filters import (
    All,
    Any_,
    Exists,
    FieldType,
    Not,
    Range,
    Term,
    Terms,
    check_metadata,
    filter_to_dict,
    infer_field_types,
    matches,
    parse_date,
    parse_field_flags,
    parse_field_types,
    parse_filter,
)
from mappings import index_body
from search_pipeline.rerank import reranked_order, windowed_order

TYPES = parse_field_types({"lang": "keyword", "year": "integer", "score": "double", "published": "date",
                           "tags": "keyword[]", "open": "boolean"})


# --- field types ------------------------------------------------------------------------------------
def test_the_config_key_and_flag_are_checked() -> None:
    from ceindex.config import load_settings

    settings = load_settings(data={"build": {"fields": {"lang": "keyword", "tags": "keyword[]"}},
                                   "search": {"max_depth": 200}})
    assert settings.build.fields == {"lang": "keyword", "tags": "keyword[]"} and settings.search.max_depth == 200
    with pytest.raises(ConfigError, match=r"build.fields.year: unknown type 'int'"):
        load_settings(data={"build": {"fields": {"year": "int"}}})
    with pytest.raises(ConfigError, match=r"build.fields must be dict, got \['year'\]"):
        load_settings(data={"build": {"fields": ["year"]}})


def test_field_types_parse_and_name_what_is_allowed() -> None:
    assert TYPES["tags"] == FieldType("keyword", True) and str(TYPES["tags"]) == "keyword[]"
    with pytest.raises(ConfigError, match=r"build.fields.year: unknown type 'int'; allowed: keyword, integer"):
        parse_field_types({"year": "int"})
    with pytest.raises(ConfigError, match="field name 'a.b' is not allowed"):
        parse_field_types({"a.b": "keyword"})
    assert parse_field_flags(["lang=keyword", "tags=keyword[]"]) == {"lang": "keyword", "tags": "keyword[]"}
    with pytest.raises(ConfigError, match="write NAME=TYPE"):
        parse_field_flags(["lang"])


def test_documents_values_are_checked_and_normalised() -> None:
    meta, problem = check_metadata({"year": "2005", "score": "0.5", "open": "true", "lang": "en", "other": {"x": 1}},
                                   TYPES)
    assert problem is None and meta == {"year": 2005, "score": 0.5, "open": True, "lang": "en", "other": {"x": 1}}
    meta, problem = check_metadata({"year": "", "tags": []}, TYPES)  # empty CSV cell / list: no value
    assert problem is None and meta == {}
    bad = {"year": "abc", "score": "NaN", "published": "2020-13-01", "tags": [{"a": 1}], "lang": ["en", "de"],
           "open": "maybe"}
    reasons = {name: check_metadata({name: value}, TYPES)[1] for name, value in bad.items()}
    assert reasons["year"] == "field 'year' is not integer: expected an integer, got \"abc\""
    assert reasons["score"].startswith("field 'score' is not double: expected a finite number")
    assert reasons["published"].startswith("field 'published' is not date: '2020-13-01' is not a real date")
    assert reasons["tags"].startswith("field 'tags' is not keyword[]: expected a string")
    assert reasons["lang"] == "field 'lang' is not keyword: expected one keyword value, got a list (declare the type as keyword[])"
    assert reasons["open"].startswith("field 'open' is not boolean")


def test_dates_are_epoch_milliseconds_utc() -> None:
    assert parse_date("1970-01-02") == 86_400_000
    assert parse_date("1970-01-01T01:00:00+01:00") == 0
    assert parse_date("1970-01-01T00:00:01.5Z") == 1500
    assert parse_date(123) == 123
    for bad in ("2020/01/01", "01-01-2020", "2020-01-01 10:00", "yesterday", 1.5, True):
        with pytest.raises(ValueError):
            parse_date(bad)


def test_inference_types_a_sample_and_says_what_it_skipped() -> None:
    sample = [{"lang": "en", "year": 2000, "score": 1, "when": "2020-01-01", "tags": ["a"], "mixed": 1, "obj": {"a": 1}},
              {"lang": "de", "year": 2001, "score": 0.5, "when": "2021-02-03T10:00:00Z", "tags": [], "mixed": "x"}]
    typed, skipped = infer_field_types(sample)
    assert {n: str(t) for n, t in typed.items()} == {"lang": "keyword", "score": "double", "tags": "keyword[]",
                                                     "when": "date", "year": "integer"}
    assert skipped == {"mixed": "mixed kinds in the sample (integer, keyword)", "obj": "holds objects or nested lists"}


# --- parsing filters ------------------------------------------------------------------------------------
def test_filters_parse_into_dataclasses_with_normalised_values() -> None:
    raw = {"all": [{"term": {"lang": "en"}}, {"terms": {"tags": ["a", "b"]}},
                   {"range": {"published": {"gte": "2000-01-01", "lt": "2010-01-01"}}},
                   {"any": [{"exists": "year"}, {"not": {"term": {"open": True}}}]}]}
    parsed = parse_filter(json.dumps(raw), TYPES)
    assert parsed == All((Term("lang", "en"), Terms("tags", ("a", "b")),
                          Range("published", gte=946_684_800_000, lt=1_262_304_000_000),
                          Any_((Exists("year"), Not(Term("open", True))))))
    assert parse_filter(filter_to_dict(parsed), TYPES) == parsed
    assert parse_filter(None, TYPES) is None and parse_filter({}, TYPES) is None
    assert parse_filter({"range": {"year": {"gte": 2000.0}}}, TYPES) == Range("year", gte=2000)


@pytest.mark.parametrize("raw, message", [
    ({"term": {"country": "en"}}, r"unknown field 'country'; the index's filterable fields: lang \(keyword\), open"),
    ({"term": {"year": "abc"}}, r"filter 'term' on 'year' \(integer\): expected an integer"),
    ({"term": {"lang": 5}}, r"filter 'term' on 'lang' \(keyword\) needs a string"),
    ({"range": {"lang": {"gte": "a"}}}, "range works on integer, double and date fields"),
    ({"range": {"published": {"gte": "last year"}}}, r"'last year' is not a date; use YYYY-MM-DD"),
    ({"range": {"year": {"from": 1}}}, "takes bounds among gt, gte, lt, lte"),
    ({"terms": {"tags": []}}, "needs a non-empty list"),
    ({"all": []}, "'all' takes a non-empty list"),
    ({"match": {"lang": "en"}}, "unknown filter operator 'match'; allowed: term, terms, range, exists, all, any, not"),
    ({"term": {"lang": "en"}, "exists": "year"}, "exactly one of"),
    ("{not json", "filter is not valid JSON"),
    ({"exists": 3}, "needs a field name"),
])
def test_bad_filters_are_input_errors_naming_field_and_what_is_allowed(raw: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_filter(raw, TYPES)


def test_an_index_without_fields_says_how_to_declare_them() -> None:
    with pytest.raises(InputError, match="--field NAME=TYPE"):
        parse_filter({"term": {"lang": "en"}}, {})


def test_deeply_nested_filters_are_refused_not_a_recursion_error() -> None:
    raw: dict[str, Any] = {"exists": "lang"}
    for _ in range(50):
        raw = {"not": raw}
    with pytest.raises(InputError, match="too large"):
        parse_filter(raw, TYPES)


# --- translations -------------------------------------------------------------------------------------
def test_query_dsl_translation() -> None:
    parsed = parse_filter({"all": [{"term": {"lang": "en"}}, {"not": {"exists": "year"}},
                                   {"any": [{"range": {"year": {"gte": 2000}}}, {"terms": {"tags": ["a"]}}]}]}, TYPES)
    assert filter_clause(parsed) == {"bool": {"filter": [
        {"term": {"metadata.lang": "en"}},
        {"bool": {"must_not": [{"exists": {"field": "metadata.year"}}]}},
        {"bool": {"should": [{"range": {"metadata.year": {"gte": 2000}}}, {"terms": {"metadata.tags": ["a"]}}],
                  "minimum_should_match": 1}},
    ]}}
    assert match_query("q") == {"match": {"body": "q"}}
    assert match_query("q", Term("lang", "en")) == {"bool": {"must": [{"match": {"body": "q"}}],
                                                            "filter": [{"term": {"metadata.lang": "en"}}]}}
    assert knn_query([1, 0], 5, Term("lang", "en")) == {"knn": {"vector": {
        "vector": [1.0, 0.0], "k": 5, "filter": {"term": {"metadata.lang": "en"}}}}}


def test_the_mapping_types_the_fields() -> None:
    body = index_body(dims=4, meta={}, fields={"lang": "keyword", "year": "integer", "tags": "keyword[]",
                                               "published": "date"})
    properties = body["mappings"]["properties"]["metadata"]["properties"]
    assert properties == {"lang": {"type": "keyword"}, "year": {"type": "long"}, "tags": {"type": "keyword"},
                          "published": {"type": "date", "format": "strict_date_optional_time||epoch_millis"}}
    assert "properties" not in index_body(dims=4, meta={})["mappings"]["properties"]["metadata"]


# --- the embedded columns agree with the reference on random filters ----------------------------------------
def planted_metadata(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        meta: dict[str, Any] = {"lang": rng.choice(["en", "de", "fr", "es"]), "year": 1990 + rng.randrange(30),
                                "score": round(rng.random(), 2), "published": f"20{rng.randrange(20):02d}-0{1 + rng.randrange(9)}-15",
                                "tags": rng.sample(["a", "b", "c", "d", "e"], rng.randrange(3)), "open": rng.random() < 0.3}
        for name in ("year", "published", "lang"):
            if rng.random() < 0.1:
                meta.pop(name)
        docs.append(check_metadata(meta, TYPES)[0])
    return docs


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    choice = rng.randrange(9 if depth < 2 else 6)
    if choice == 0:
        return {"term": {"lang": rng.choice(["en", "de", "xx"])}}
    if choice == 1:
        return {"terms": {"tags": rng.sample(["a", "b", "c", "z"], rng.randrange(1, 3))}}
    if choice == 2:
        low = 1990 + rng.randrange(30)
        return {"range": {"year": {rng.choice(["gt", "gte"]): low, rng.choice(["lt", "lte"]): low + rng.randrange(15)}}}
    if choice == 3:
        return {"range": {"published": {"gte": f"20{rng.randrange(20):02d}-01-01"}}}
    if choice == 4:
        return {"exists": rng.choice(["year", "lang", "published"])}
    if choice == 5:
        return rng.choice([{"term": {"open": True}}, {"range": {"score": {"lt": rng.random()}}}])
    if choice == 6:
        return {"not": random_filter(rng, depth + 1)}
    key = "all" if choice == 7 else "any"
    return {key: [random_filter(rng, depth + 1) for _ in range(rng.randrange(1, 4))]}


def test_columns_mask_equals_the_reference_on_random_filters() -> None:
    docs = planted_metadata(400)
    columns = FieldColumns.build(len(docs), TYPES, enumerate(docs))
    rng = random.Random(7)
    for _ in range(300):
        parsed = parse_filter(random_filter(rng), TYPES)
        expected = np.array([matches(parsed, d, TYPES) for d in docs])
        assert np.array_equal(columns.mask(parsed), expected), filter_to_dict(parsed)


def test_columns_save_and_load(tmp_path: Any) -> None:
    docs = planted_metadata(50)
    FieldColumns.build(len(docs), TYPES, enumerate(docs)).save(tmp_path)
    loaded = FieldColumns.load(tmp_path, TYPES)
    parsed = parse_filter({"any": [{"term": {"lang": "en"}}, {"terms": {"tags": ["b"]}}]}, TYPES)
    assert list(np.flatnonzero(loaded.mask(parsed))) == [i for i, d in enumerate(docs) if matches(parsed, d, TYPES)]


# --- pages: windowed re-rank order ------------------------------------------------------------------------
def test_windowed_order_reranks_each_window_in_itself() -> None:
    ids = [f"d{i}" for i in range(7)]
    scores = {"d1": 0.5, "d2": 0.9, "d4": 0.1, "d6": 0.7}
    assert windowed_order(ids, scores, 3) == ["d2", "d1", "d0", "d4", "d3", "d5", "d6"]
    first = {d: s for d, s in scores.items() if d in ids[:3]}  # a page in the first window only scores it
    assert windowed_order(ids, first, 3) == reranked_order(ids, first)
    assert windowed_order(ids, first, 3)[:3] == windowed_order(ids, scores, 3)[:3]
