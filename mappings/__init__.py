"""Versioned OpenSearch index templates (JSON files beside this module)."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

CURRENT_VERSION = 1


@lru_cache(maxsize=None)
def _load(version: int) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(f"index-v{version}.json").read_text(encoding="utf-8")
    template = json.loads(text)
    template.pop("_comment", None)
    return template


def index_body(
    *, dims: int, meta: dict[str, Any], m: int = 16, ef_construction: int = 128, shards: int = 1,
    version: int = CURRENT_VERSION,
) -> dict[str, Any]:
    """The create-index request body for a build: template ``version`` with the build's values filled in."""
    body = copy.deepcopy(_load(version))
    body["settings"]["index"]["number_of_shards"] = shards
    vector = body["mappings"]["properties"]["vector"]
    vector["dimension"] = dims
    vector["method"]["parameters"] = {"m": m, "ef_construction": ef_construction}
    body["mappings"]["_meta"] = meta
    return body
