"""``--server-fusion auto`` across an alias swap: a long-running ``serve`` must stop fusing in the cluster once the
alias points at a several-shard build (neural-search fuses per shard there). Before, the OpenSearch backend cached
the shard count by alias name and the pipeline decided once, so a swap from 1 shard to 3 kept fusing in the cluster."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

import search_pipeline.pipeline as pipeline_module
from ceindex.backends.base import IndexInfo
from ceindex.backends.opensearch import OpenSearchBackend
from ceindex.config import OpenSearchConfig, Settings
from ceindex.errors import BackendError
from ceindex.models.base import EncoderDescription
from search_pipeline import SearchPipeline

ENCODER = EncoderDescription(kind="ce-layer", model="hand-made", weights_sha256="0" * 64, dims=1, layer=0,
                             input_mode="self-pair")
SHARDS = {"docs-1": 1, "docs-2": 3}  # the first build has one primary shard, the rebuild three


class FakeCluster:
    """The two calls the fusion decision makes: the plugin list and the settings of what the alias points at."""

    def __init__(self) -> None:
        self.alias_target = "docs-1"
        self.settings_calls = 0
        self.cat = SimpleNamespace(plugins=lambda format: [{"component": "opensearch-neural-search",
                                                            "version": "2.19.1"}])
        self.indices = SimpleNamespace(get_settings=self._get_settings)

    def _get_settings(self, index: str, name: str) -> dict[str, Any]:
        self.settings_calls += 1
        physical = self.alias_target if index == "docs" else index
        return {physical: {"settings": {"index": {"number_of_shards": str(SHARDS[physical])}}}}


def test_the_shard_caveat_follows_the_alias_not_its_name() -> None:
    cluster = FakeCluster()
    backend = OpenSearchBackend(OpenSearchConfig(url="http://127.0.0.1:1"), client=cluster)
    assert backend.server_fusion_caveat("docs", "rrf") is None
    cluster.alias_target = "docs-2"  # the alias swapped to the 3-shard rebuild
    caveat = backend.server_fusion_caveat("docs", "rrf")
    assert caveat is not None and "3 primary shards" in caveat and "docs-2" in caveat


class SwappableBackend:
    """The parts of the Backend contract the fusion decision calls; ``shards`` stands for the alias's build."""

    def __init__(self) -> None:
        self.shards = 1
        self.caveat_calls = 0
        self.fail = False

    def info(self, index: str) -> IndexInfo:
        return IndexInfo(name=index, physical=f"{index}-1", encoder=ENCODER, count=3)

    def server_fusion(self, method: str, weights: Any, rrf_k: int) -> bool:
        return True

    def server_fusion_caveat(self, name: str, method: str) -> str | None:
        self.caveat_calls += 1
        if self.fail:
            raise BackendError("the cluster did not answer")
        return None if self.shards <= 1 else f"index '{name}' has {self.shards} primary shards"


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(pipeline_module.time, "monotonic", lambda: now[0])
    return now


def _pipeline(backend: SwappableBackend) -> SearchPipeline:
    settings = Settings(index="docs")
    settings = replace(settings, search=replace(settings.search, server_fusion="auto", bm25=True, knn=True))
    return SearchPipeline(settings, backend)  # type: ignore[arg-type]


def test_a_long_lived_pipeline_re_decides_after_an_alias_swap(clock: list[float]) -> None:
    backend = SwappableBackend()
    pipeline = _pipeline(backend)
    assert pipeline.uses_server_fusion  # one shard: fused in the cluster
    backend.shards = 3  # the alias now points at a 3-shard rebuild
    for _ in range(50):  # within the recheck interval: no request per query
        clock[0] += pipeline_module.FUSION_RECHECK_S / 100
        assert pipeline.uses_server_fusion
    assert backend.caveat_calls == 1
    clock[0] += pipeline_module.FUSION_RECHECK_S
    assert not pipeline.uses_server_fusion  # re-decided: fused in ceindex
    assert backend.caveat_calls == 2
    backend.shards = 1
    clock[0] += pipeline_module.FUSION_RECHECK_S
    assert pipeline.uses_server_fusion


def test_a_failed_recheck_keeps_the_last_decision(clock: list[float]) -> None:
    backend = SwappableBackend()
    pipeline = _pipeline(backend)
    assert pipeline.uses_server_fusion
    backend.fail = True
    clock[0] += pipeline_module.FUSION_RECHECK_S
    assert pipeline.uses_server_fusion
