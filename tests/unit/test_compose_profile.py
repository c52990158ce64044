"""The three-node compose profile is what the cluster tests run (ceindex/testing/opensearch_cluster.py): parsed
here without Docker, with its mistakes refused by file and reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from ceindex.testing.opensearch_cluster import COMPOSE_FILE, MAX_MEMBER_HEAP, OpenSearchCluster, read_compose_profile

PROFILE_YAML = """
x-ceindex:
  build: {{ shards: 3, replicas: 1 }}
x-env: &env
  cluster.name: c
  discovery.seed_hosts: {seeds}
  cluster.initial_cluster_manager_nodes: a,b,c
  bootstrap.memory_lock: "true"
  OPENSEARCH_JAVA_OPTS: -Xms1g
services:
  a: {{ environment: {{ <<: *env, node.name: a }} }}
  b: {{ environment: {{ <<: *env, node.name: b }} }}
  c: {{ environment: {{ <<: *env, node.name: c }} }}
"""


def test_the_repository_profile_is_three_nodes_three_shards_one_replica() -> None:
    profile = read_compose_profile(COMPOSE_FILE)
    assert profile.node_names == ("os1", "os2", "os3") and profile.initial_managers == profile.node_names
    assert (profile.shards, profile.replicas) == (3, 1)
    # only real node settings reach the loopback members: no Docker plumbing, no image environment variables
    assert profile.settings == {"cluster.name": "ceindex-cluster", "cluster.initial_cluster_manager_nodes": "os1,os2,os3"}


def test_a_profile_is_read_with_its_yaml_merge_keys(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(PROFILE_YAML.format(seeds="a,b,c"))
    profile = read_compose_profile(path)
    assert profile.node_names == ("a", "b", "c") and profile.cluster_name == "c" and profile.shards == 3


@pytest.mark.parametrize(("text", "reason"), [
    (PROFILE_YAML.format(seeds="a,b,x"), "do not name the nodes"),
    (PROFILE_YAML.format(seeds="a,b,c").replace("x-ceindex:\n  build: { shards: 3, replicas: 1 }\n", ""),
     "no x-ceindex.build"),
    ("services:\n  a: { environment: { node.name: a } }\n", "expected a multi-node profile"),
])
def test_a_profile_that_does_not_fit_is_refused_with_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason) as failure:
        read_compose_profile(path)
    assert str(path) in str(failure.value)


def test_members_are_held_to_512_mb_of_heap() -> None:
    assert MAX_MEMBER_HEAP == "512m"
    with pytest.raises(ValueError, match="above the 512m"):
        OpenSearchCluster(heap="1g")
