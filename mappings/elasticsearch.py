"""The Elasticsearch 8 index template (``elasticsearch-v1.json`` beside this module)."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from mappings import add_metadata_fields

CURRENT_VERSION = 1
# dense_vector index types ceindex offers: float32 HNSW, or HNSW over int8-quantised vectors (ES's default for
# dims >= 384 since 8.14: a quarter of the vector memory, re-scored approximately)
VECTOR_INDEX_TYPES = ("hnsw", "int8_hnsw")
# the BM25 text analyzer, best first: Elasticsearch's own `english` (analysis-common module), the same Lucene
# EnglishAnalyzer from ceindex's stable plugin (the Maven test node), else standard tokens with English stop words
TEXT_ANALYZERS: dict[str, dict[str, Any]] = {
    "english": {"type": "english"},
    "ceindex_english": {"type": "ceindex_english"},
    "standard": {"type": "standard", "stopwords": "_english_"},
}


@lru_cache(maxsize=None)
def _load(version: int) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"elasticsearch-v{version}.json").read_text(encoding="utf-8")
    template = json.loads(text)
    template.pop("_comment", None)
    return template


def elasticsearch_index_body(
    *, dims: int, meta: dict[str, Any], m: int = 16, ef_construction: int = 128, shards: int = 1,
    vector_index: str = "hnsw", version: int = CURRENT_VERSION, fields: Mapping[str, str] | None = None,
    analyzer: str = "english",
) -> dict[str, Any]:
    """The create-index request body for a build on Elasticsearch: the template with the build's values, and the
    typed metadata ``fields`` mapped under ``metadata`` exactly as on OpenSearch (``mappings.FIELD_MAPPINGS``)."""
    if vector_index not in VECTOR_INDEX_TYPES:
        raise ValueError(f"vector index type must be one of {', '.join(VECTOR_INDEX_TYPES)}, got {vector_index!r}")
    body = copy.deepcopy(_load(version))
    body["settings"]["index"]["number_of_shards"] = shards
    body["settings"]["index"]["analysis"]["analyzer"]["ceindex_text"] = dict(TEXT_ANALYZERS[analyzer])
    vector = body["mappings"]["properties"]["vector"]
    vector["dims"] = dims
    vector["index_options"] = {"type": vector_index, "m": m, "ef_construction": ef_construction}
    body["mappings"]["_meta"] = meta
    add_metadata_fields(body, fields)
    return body
