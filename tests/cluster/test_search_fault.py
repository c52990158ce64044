"""SIGKILL one member under a bounded search load (2 client threads, 3 phases of 5 s, loopback): searches keep
answering from the replicas, with the healthy cluster's answers. The full-size run is bench/cluster_fault_bench.py
(its figures are in the README); this runs the same code small."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster_fault_bench import PHASES, measure
from ceindex.testing.opensearch_cluster import OpenSearchCluster

pytestmark = pytest.mark.cluster


def test_searches_keep_answering_from_replicas_while_a_member_is_dead(
        opensearch_cluster: OpenSearchCluster, tiny_ce_dir: Path, tmp_path: Path) -> None:
    result = measure(opensearch_cluster, model=str(tiny_ce_dir), copies=4, clients=2, phase_seconds=5.0,
                     folder=tmp_path, warmup_seconds=2.0)
    phases = result["phases"]
    assert (result["shards"], result["replicas"]) == (3, 1) and result["health_during"] in ("yellow", "green")
    for phase in PHASES:
        assert phases[phase]["searches"] > 0, phases
        assert phases[phase]["errors"] == 0, phases  # a dead member's shards are served by their replicas ...
        assert phases[phase]["changed_answers"] == 0, phases  # ... with the same answers (no partial results)
    assert opensearch_cluster.health()["status"] == "green"
