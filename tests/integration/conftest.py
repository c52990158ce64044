"""Integration tests share the session OpenSearch node fixtures of ``tests/conftest.py``, and the build tests
share these: the tiny CE as a layer-1 encoder, and settings for a fresh index on a parametrised backend."""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ceindex.config import BuildConfig, OpenSearchConfig, Settings
from ceindex.models import EncoderConfig, load_encoder
from tests.conftest import cluster_url


@pytest.fixture(scope="module")
def encoder(tiny_ce_dir: Path):
    return load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64, batch_size=8))


def build_settings(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Settings:
    """Small batches and a fresh index name (the nodes are shared by the session) on ``request.param``'s backend."""
    base = Settings(index=f"{prefix}{uuid.uuid4().hex[:8]}", home=str(tmp_path / "home"),
                    build=BuildConfig(encode_batch_docs=5, chunk_docs=4))
    url = cluster_url(request, request.param)
    if url:
        base = replace(base, opensearch=OpenSearchConfig(url=url, max_retries=1, timeout=10))
    return base
