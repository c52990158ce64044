"""SIGKILL one node of the three-node OpenSearch 2.19 test cluster under a bounded search load (issue 16).

Starts the loopback cluster (``ceindex/testing/opensearch_cluster.py``: settings from the three-node compose profile),
builds an index with the profile's shards and replicas (3 primaries, 1 replica) from the sample corpus made
``--copies`` times bigger, then runs ``--clients`` threads that each send ceindex's own recall requests (one
``backend.bm25`` and one ``backend.knn`` msearch per search, pre-encoded query vectors; the CE is not in the loop, so
the figures are the cluster's) through the first member, after ``--warmup-seconds`` of uncounted load, in three
phases of ``--phase-seconds``:

  before   all three members up
  during   right after SIGKILL of a member that holds a primary (not the one the clients talk to); it stays down
  after    the member restarted and the cluster green again (the restart and recovery themselves are not loaded)

Per phase: searches, errors (exceptions), answers that differ from the healthy cluster's answer to the same query
(a partial or wrong result would show here), p50/p95/max latency in ms. Writes bench/results/cluster_faults.json.

    flock /tmp/ceindex-bench.lock .venv/bin/python bench/cluster_fault_bench.py
    ... --phase-seconds 5 --clients 2            # a quick run (the cluster test runs it this small)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ceindex.backends import open_backend  # noqa: E402
from ceindex.backends.base import Backend  # noqa: E402
from ceindex.config import BuildConfig, OpenSearchConfig, Settings  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from ceindex.testing.opensearch_cluster import OpenSearchCluster  # noqa: E402
from indexer.build import build_index  # noqa: E402

logger = logging.getLogger("cluster_fault_bench")
SAMPLE = Path(__file__).resolve().parents[1] / "ceindex" / "samples" / "tiny-science"
PHASES = ("before", "during", "after")
MAX_LOAD_SECONDS = 60


@dataclass
class PhaseStats:
    """What the clients saw in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    changed: int = 0  # answers that differ from the healthy cluster's answer to the same query

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
        return {"searches": len(lat) + len(self.errors), "errors": len(self.errors), "changed_answers": self.changed,
                "p50_ms": round(statistics.median(lat), 1) if lat else None, "p95_ms": pick(0.95),
                "max_ms": round(lat[-1], 1) if lat else None, "first_errors": self.errors[:3]}


def sample_corpus(folder: Path, copies: int) -> tuple[Path, list[str]]:
    """The sample corpus ``copies`` times over (distinct ids) and the sample queries."""
    rows = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").read_text().splitlines() if line.strip()]
    path = folder / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(copies):
            for row in rows:
                out.write(json.dumps({**row, "_id": f"{row['_id']}#{copy}"}) + "\n")
    queries = [json.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").read_text().splitlines() if line.strip()]
    return path, queries


def one_search(backend: Backend, index: str, query: str, vector: Any, n: int) -> tuple[str, ...]:
    """What the pipeline asks the cluster for one query (BM25 and k-NN recall); the answer as ids."""
    bm25 = backend.bm25(index, [query], n)[0]
    knn = backend.knn(index, vector[None, :], n)[0]
    return tuple(h.id for h in bm25) + ("|",) + tuple(h.id for h in knn)


def run_load(search: Callable[[int], tuple[str, ...]], n_queries: int, clients: int, seconds: float,
             expected: dict[int, tuple[str, ...]], stats: PhaseStats) -> None:
    """``clients`` threads searching round-robin for ``seconds``; every outcome lands in ``stats``."""
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop_at:
            q = i % n_queries
            begin = time.perf_counter()
            try:
                answer = search(q)
            except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome here
                with lock:
                    stats.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            else:
                with lock:
                    stats.latencies_ms.append((time.perf_counter() - begin) * 1000)
                    stats.changed += answer != expected[q]
            i += clients

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)  # a request still waiting at the end is bounded by the client timeout


def build_corpus(settings: Settings, encoder: Any, corpus: Path, folder: Path, backend: Backend | None = None) -> Any:
    """``ceindex build`` of ``corpus`` into ``settings.index`` (rejects under ``folder``); the build summary."""
    backend = backend or open_backend(settings)
    try:
        return build_index(backend, encoder, corpus, settings.index, settings.build,
                           rejects_path=folder / "rejects.jsonl", progress=False)
    finally:
        backend.close()


def build(cluster: OpenSearchCluster, folder: Path, copies: int, model: str, shards: int, replicas: int):
    corpus, queries = sample_corpus(folder, copies)
    settings = Settings(index=f"fault{uuid.uuid4().hex[:6]}", home=str(folder / "home"),
                        build=BuildConfig(shards=shards, replicas=replicas, encode_batch_docs=100, chunk_docs=100),
                        opensearch=OpenSearchConfig(url=cluster.url, timeout=30.0, max_retries=2))
    encoder = load_encoder(EncoderConfig(model=model, layer=1, max_length=64, batch_size=32))
    summary = build_corpus(settings, encoder, corpus, folder)
    if not summary.published:
        raise RuntimeError(f"the bench index was not published: {summary.held_back}")
    return settings, queries, encoder.encode(queries), summary.indexed


def measure(cluster: OpenSearchCluster, *, model: str, copies: int = 10, clients: int = 3, phase_seconds: float = 15.0,
            n: int = 10, folder: Path | None = None, warmup_seconds: float = 10.0) -> dict[str, Any]:
    """Build the index, then the three phases with a SIGKILL and a restart between them; returns the figures."""
    if 3 * phase_seconds > MAX_LOAD_SECONDS:
        raise ValueError(f"3 phases of {phase_seconds}s exceed the {MAX_LOAD_SECONDS}s bound of the load")
    profile = cluster.profile
    with tempfile.TemporaryDirectory(prefix="ceindex-fault-") as tmp:
        settings, queries, vectors, docs = build(cluster, folder or Path(tmp), copies, model, profile.shards,
                                                 profile.replicas)
        cluster.wait_for("green", nodes=len(cluster.nodes))
    backend = open_backend(settings)
    try:
        def search(q: int) -> tuple[str, ...]:
            return one_search(backend, settings.index, queries[q], vectors[q], n)

        expected = {q: search(q) for q in range(len(queries))}
        run_load(search, len(queries), clients, warmup_seconds, expected, PhaseStats())  # JIT and caches, not counted
        stats = {phase: PhaseStats() for phase in PHASES}
        run_load(search, len(queries), clients, phase_seconds, expected, stats["before"])
        victim = next(i for i in range(1, len(cluster.nodes))
                      if any(s["node"] == cluster.name_of(i) and s["prirep"] == "p"
                             for s in cluster.get(f"/_cat/shards/{settings.index}?format=json")))
        manager = cluster.manager()
        killed_at = time.monotonic()
        cluster.kill(victim)
        run_load(search, len(queries), clients, phase_seconds, expected, stats["during"])
        health_during = cluster.health()["status"]
        cluster.restart(victim)
        cluster.wait_for("green", nodes=len(cluster.nodes))
        back_after = time.monotonic() - killed_at
        run_load(search, len(queries), clients, phase_seconds, expected, stats["after"])
    finally:
        backend.close()
    return {
        "docs": docs, "queries": len(queries), "clients": clients, "phase_seconds": phase_seconds, "n": n,
        "warmup_seconds": warmup_seconds, "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "shards": profile.shards, "replicas": profile.replicas, "killed": cluster.name_of(victim),
        "killed_was_cluster_manager": manager == cluster.name_of(victim), "health_during": health_during,
        "green_again_s_after_kill": round(back_after, 1),
        "phases": {phase: stats[phase].summary() for phase in PHASES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3, help="search threads (default 3)")
    parser.add_argument("--phase-seconds", type=float, default=15.0,
                        help=f"load seconds per phase, 3 phases at most {MAX_LOAD_SECONDS}s in all (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=10.0,
                        help="uncounted load before the first phase (JIT, caches; default 10)")
    parser.add_argument("--copies", type=int, default=10, help="sample corpus copies (30 docs each; default 10)")
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "shared" / "models" /
                                               "ce-minilm-l6-scifact"), help="CE whose layer 1 embeds (default: fixture CE)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cluster_faults.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("opensearch").setLevel(logging.ERROR)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # opensearch-py's pool of 1 (README)
    with OpenSearchCluster() as cluster:
        result = measure(cluster, model=args.model, copies=args.copies, clients=args.clients,
                         phase_seconds=args.phase_seconds, warmup_seconds=args.warmup_seconds)
    result["command"] = "bench/cluster_fault_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
