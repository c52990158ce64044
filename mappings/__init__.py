"""Versioned OpenSearch index templates (JSON files beside this module)."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

CURRENT_VERSION = 1
# ceindex field kinds (ceindex.filters.KINDS) -> mapping of the field under metadata.<name>; a list field
# ("keyword[]") maps like its element, as both engines index arrays as they are.
FIELD_MAPPINGS: dict[str, dict[str, Any]] = {
    "keyword": {"type": "keyword"},
    "integer": {"type": "long"},
    "double": {"type": "double"},
    "boolean": {"type": "boolean"},
    "date": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
}


@lru_cache(maxsize=None)
def _load(version: int) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(f"index-v{version}.json").read_text(encoding="utf-8")
    template = json.loads(text)
    template.pop("_comment", None)
    return template


def index_body(
    *, dims: int, meta: dict[str, Any], m: int = 16, ef_construction: int = 128, shards: int = 1,
    version: int = CURRENT_VERSION, fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The create-index request body for a build: template ``version`` with the build's values filled in, and
    the typed metadata ``fields`` (``{"lang": "keyword", "tags": "keyword[]"}``) mapped under ``metadata``."""
    body = copy.deepcopy(_load(version))
    body["settings"]["index"]["number_of_shards"] = shards
    vector = body["mappings"]["properties"]["vector"]
    vector["dimension"] = dims
    vector["method"]["parameters"] = {"m": m, "ef_construction": ef_construction}
    body["mappings"]["_meta"] = meta
    add_metadata_fields(body, fields)
    return body


def add_metadata_fields(body: dict[str, Any], fields: Mapping[str, str] | None) -> None:
    """Map the typed metadata ``fields`` under ``metadata`` in a create-index ``body`` (both engines alike)."""
    if fields:
        metadata = body["mappings"]["properties"]["metadata"]
        metadata["properties"] = {name: dict(FIELD_MAPPINGS[kind.removesuffix("[]")]) for name, kind in fields.items()}
