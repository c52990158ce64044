"""SIGKILL a data node in the middle of `ceindex build` into a 3-primary, 1-replica index on the real cluster.

What happens (and why): during the load the index has 0 replicas (ceindex restores ``--replicas`` at seal, for load
speed), so the killed member's primary has no other copy and that shard is red until the member returns. Bulk items
for it wait OpenSearch's one-minute primary timeout and fail with HTTP 503; the build must then FAIL with a message
saying to rerun (never record those documents as rejected rows), keep its progress at the last fully written batch,
and a rerun after the member is back must resume to the same end state: count == corpus, every id once.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ceindex.backends import open_backend
from ceindex.errors import BackendError
from ceindex.models import EncoderConfig, load_encoder
from ceindex.testing.opensearch_cluster import OpenSearchCluster
from tests.cluster.helpers import PROFILE, bigger_corpus, build_corpus, cluster_settings, member_to_kill

pytestmark = pytest.mark.cluster
logger = logging.getLogger(__name__)

KILL_AT_WRITE = 4  # the 4th committed batch (of 20 documents) meets the dead member


@pytest.fixture(scope="module")
def encoder(tiny_ce_dir: Path):
    return load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64, batch_size=20))


def test_sigkill_of_a_data_node_mid_build_fails_clearly_and_the_rerun_resumes_to_the_corpus(
        opensearch_cluster: OpenSearchCluster, encoder, tmp_path: Path) -> None:
    cluster = opensearch_cluster
    # timeout above OpenSearch's one-minute wait for a missing primary, so the server's own answer (503 per item)
    # comes back rather than a client timeout; no client retries, so the test stays within a few minutes
    settings = cluster_settings(cluster, tmp_path, timeout=90.0, max_retries=0)
    corpus, rows = bigger_corpus(tmp_path, copies=10)  # 300 documents, 15 batches of 20
    backend = open_backend(settings)
    real_write, writes, killed = backend.write, [], []

    def write_then_kill(state, docs, vectors):
        writes.append(len(docs))
        if len(writes) == KILL_AT_WRITE:
            victim = member_to_kill(cluster, state.physical)
            logger.info("SIGKILL %s (holds a primary of %s)", cluster.name_of(victim), state.physical)
            cluster.kill(victim)
            killed.append(victim)
        return real_write(state, docs, vectors)

    backend.write = write_then_kill  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="rerun") as failure:
        build_corpus(settings, encoder, corpus, tmp_path, backend)
    assert killed and len(writes) == KILL_AT_WRITE  # it stopped at the batch that met the dead member
    assert "503" in str(failure.value) or "unavailable" in str(failure.value).lower()
    assert not (tmp_path / "rejects.jsonl").exists()  # nothing was blamed on the documents

    cluster.restart(killed[0])
    cluster.wait_for("yellow", nodes=len(cluster.nodes), timeout=300)  # the member's primary is back on its disk
    summary = build_corpus(settings, encoder, corpus, tmp_path)
    assert summary.resumed_from == (KILL_AT_WRITE - 1) * 20  # the batches written before the kill are kept
    assert (summary.read, summary.indexed, summary.rejected) == (rows, rows, 0)
    assert summary.count_ok and summary.published
    cluster.wait_for("green", nodes=len(cluster.nodes), timeout=300)  # replicas restored at seal, all assigned

    index_settings = cluster.get(f"/{settings.index}/_settings")
    (physical, body), = index_settings.items()
    assert (int(body["settings"]["index"]["number_of_shards"]),
            int(body["settings"]["index"]["number_of_replicas"])) == (PROFILE.shards, PROFILE.replicas)
    backend = open_backend(settings)
    try:
        ids = [f"d{i:02d}#{c}" for c in range(10) for i in range(1, 31)]
        assert len(backend.fetch(settings.index, ids)) == rows  # every id there ...
        assert backend.info(settings.index).count == rows  # ... exactly once
    finally:
        backend.close()
