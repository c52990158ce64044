"""What the cluster tests share: settings for an index on the three-node cluster (shards and replicas from the compose
profile), a bigger copy of the sample corpus, and which member holds a primary of an index."""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from bench.cluster_fault_bench import build_corpus, sample_corpus
from ceindex.config import BuildConfig, OpenSearchConfig, Settings
from ceindex.testing.opensearch_cluster import OpenSearchCluster, read_compose_profile

PROFILE = read_compose_profile()
__all__ = ["PROFILE", "bigger_corpus", "build_corpus", "cluster_settings", "member_to_kill", "primary_holders"]


def cluster_settings(cluster: OpenSearchCluster, tmp_path: Path, *, timeout: float = 30.0, max_retries: int = 2,
                     **build: object) -> Settings:
    """A fresh index name on the cluster, built with the compose profile's shards and replicas."""
    config = BuildConfig(shards=PROFILE.shards, replicas=PROFILE.replicas, encode_batch_docs=20, chunk_docs=10)
    return Settings(index=f"c{uuid.uuid4().hex[:8]}", home=str(tmp_path / "home"), build=replace(config, **build),
                    opensearch=OpenSearchConfig(url=cluster.url, timeout=timeout, max_retries=max_retries))


def bigger_corpus(tmp_path: Path, copies: int) -> tuple[Path, int]:
    """The sample corpus ``copies`` times over (ids d01#0, d01#1, ...); returns the file and its row count."""
    path, _queries = sample_corpus(tmp_path, copies)
    return path, sum(1 for line in path.read_text().splitlines() if line.strip())


def primary_holders(cluster: OpenSearchCluster, index: str) -> dict[str, int]:
    """Member name -> how many started primaries of ``index`` it holds."""
    held: dict[str, int] = {}
    for shard in cluster.get(f"/_cat/shards/{index}?format=json"):
        if shard.get("prirep") == "p" and shard.get("state") == "STARTED":
            held[shard["node"]] = held.get(shard["node"], 0) + 1
    return held


def member_to_kill(cluster: OpenSearchCluster, index: str) -> int:
    """A member that holds a primary of ``index`` and is not the first one (the member clients talk to)."""
    held = primary_holders(cluster, index)
    for position in range(1, len(cluster.nodes)):
        if held.get(cluster.name_of(position)):
            return position
    raise AssertionError(f"no member but the first holds a primary of {index}: {held}")
