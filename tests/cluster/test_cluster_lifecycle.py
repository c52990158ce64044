"""The loopback cluster is the compose profile's cluster: its nodes, names, cluster-manager candidates and plugins,
every member within 512 MB of heap; a SIGKILLed member rejoins on its data and the cluster is green again."""
from __future__ import annotations

import pytest

from ceindex.testing.opensearch_cluster import OpenSearchCluster
from tests.cluster.helpers import PROFILE

pytestmark = pytest.mark.cluster


def test_three_members_form_the_compose_profiles_cluster(opensearch_cluster: OpenSearchCluster) -> None:
    nodes = opensearch_cluster.get("/_nodes/jvm,settings")["nodes"].values()
    assert sorted(n["name"] for n in nodes) == sorted(PROFILE.node_names)
    for node in nodes:
        settings = node["settings"]
        assert settings["cluster"]["name"].startswith(PROFILE.cluster_name)
        assert settings["cluster"]["initial_cluster_manager_nodes"].split(",") == list(PROFILE.initial_managers)
        assert set(node["roles"]) >= {"cluster_manager", "data"}
        assert node["jvm"]["mem"]["heap_max_in_bytes"] <= 512 * 1024**2
        assert node["ip"] == "127.0.0.1"
    plugins = opensearch_cluster.get("/_cat/plugins?format=json")
    for name in PROFILE.node_names:
        assert {p["component"] for p in plugins if p["name"] == name} == {"opensearch-knn", "opensearch-neural-search"}


def test_a_killed_member_rejoins_and_the_cluster_is_green_again(opensearch_cluster: OpenSearchCluster) -> None:
    cluster = opensearch_cluster
    victim = PROFILE.node_names.index(cluster.manager()) or 1  # the cluster manager, unless clients talk to it
    cluster.kill(victim)
    health = cluster.wait_for("yellow", nodes=len(cluster.nodes) - 1, timeout=120)
    assert health["number_of_nodes"] == 2  # the other two carry on (and elect a new manager if needed)
    assert cluster.manager() != cluster.name_of(victim)
    cluster.restart(victim)
    assert cluster.wait_for("green", nodes=len(cluster.nodes))["number_of_nodes"] == 3
