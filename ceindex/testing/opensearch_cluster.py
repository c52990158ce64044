"""A real three-node OpenSearch 2.19.1 cluster on loopback: three JVMs of the Maven-built test node.

Each member is an :class:`~ceindex.testing.opensearch_node.OpenSearchNode` (k-NN + neural-search, heap <= 512 MB,
data in its own temporary folder) that finds the others over 127.0.0.1 (``discovery.seed_hosts`` = the members'
transport ports, ``cluster.initial_cluster_manager_nodes`` = their names). The cluster settings, node names and
the ceindex build settings (shards, replicas) come from the three-node compose profile
``docker/docker-compose.cluster.yml`` (:func:`read_compose_profile`), so that file and the tests cannot drift::

    with OpenSearchCluster() as cluster:       # starts all three, waits for green with three nodes
        cluster.url                            # the first member's base URL (clients talk to it)
        cluster.kill(2)                        # SIGKILL one member (a crash): data and ports kept
        cluster.restart(2)                     # back on its data; then cluster.wait_for("green")

By hand: ``python -m ceindex.testing.opensearch_cluster``. Same limits as the single test node (plain HTTP, no
security plugin, k-NN engine ``lucene`` only); the compose profile's security settings do not apply here.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ceindex.testing.java_node import free_port, heap_bytes, tail
from ceindex.testing.opensearch_node import REPO_ROOT, OpenSearchNode

logger = logging.getLogger(__name__)

COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.cluster.yml"
MAX_MEMBER_HEAP = "512m"
# compose environment entries that are Docker plumbing, not node settings the loopback members can take:
# memory locking needs the container's ulimit; seed hosts are container names (mapped to loopback ports instead)
DOCKER_ONLY_SETTINGS = frozenset({"bootstrap.memory_lock", "discovery.seed_hosts", "node.name"})
STATUS_ORDER = {"red": 0, "yellow": 1, "green": 2}


@dataclass(frozen=True)
class ComposeProfile:
    """What the three-node compose profile says, in the terms the loopback cluster and ceindex build use."""

    path: Path
    node_names: tuple[str, ...]
    seed_hosts: tuple[str, ...]
    settings: dict[str, str]  # node settings every member takes (cluster.name, initial cluster managers, ...)
    shards: int
    replicas: int

    @property
    def cluster_name(self) -> str:
        return self.settings.get("cluster.name", "ceindex-cluster")

    @property
    def initial_managers(self) -> tuple[str, ...]:
        return tuple(_split(self.settings.get("cluster.initial_cluster_manager_nodes", "")))


def _split(value: str) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _profile_error(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path}: {reason} (the cluster tests read this compose profile; fix the file)")


def read_compose_profile(path: Path = COMPOSE_FILE) -> ComposeProfile:
    """Parse the compose file: one service per node (its ``node.name``), the OpenSearch settings the nodes share
    (dotted environment keys, less the Docker-only ones) and the ``x-ceindex.build`` shards/replicas."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    services = doc.get("services") or {}
    names: list[str] = []
    shared: dict[str, str] | None = None
    for service, spec in services.items():
        env = {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
        names.append(env.get("node.name", service))
        settings = {k: v for k, v in env.items() if "." in k and k not in DOCKER_ONLY_SETTINGS}
        if shared is not None and settings != shared:
            raise _profile_error(path, f"service {service} has other node settings than the first service")
        shared = settings
        seeds = tuple(_split(env.get("discovery.seed_hosts", "")))
    if len(names) < 2 or shared is None:
        raise _profile_error(path, f"expected a multi-node profile, found services {sorted(services)}")
    build = (doc.get("x-ceindex") or {}).get("build") or {}
    if "shards" not in build or "replicas" not in build:
        raise _profile_error(path, "no x-ceindex.build.shards / replicas (what `ceindex build` should use there)")
    profile = ComposeProfile(path=Path(path), node_names=tuple(names), seed_hosts=seeds, settings=shared,
                             shards=int(build["shards"]), replicas=int(build["replicas"]))
    if set(profile.seed_hosts) != set(names) or not set(profile.initial_managers) <= set(names):
        raise _profile_error(path, f"discovery.seed_hosts {profile.seed_hosts} / initial cluster managers "
                                   f"{profile.initial_managers} do not name the nodes {names}")
    return profile


@dataclass(eq=False)
class OpenSearchCluster:
    """N members of the test node forming one cluster over 127.0.0.1 (see the module docstring)."""

    profile: ComposeProfile = field(default_factory=read_compose_profile)
    heap: str = MAX_MEMBER_HEAP
    startup_timeout: float = 420.0  # three JVMs starting at once on a busy 2-core machine
    cluster_name: str | None = None  # None = the profile's name plus a random suffix (no cross-talk between runs)
    nodes: list[OpenSearchNode] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if heap_bytes(self.heap) > heap_bytes(MAX_MEMBER_HEAP):
            raise ValueError(f"heap {self.heap} is above the {MAX_MEMBER_HEAP} per member of the test cluster")
        if self.cluster_name is None:
            self.cluster_name = f"{self.profile.cluster_name}-{uuid.uuid4().hex[:6]}"

    # ----------------------------------------------------------------- members
    def _members(self) -> list[OpenSearchNode]:
        names = self.profile.node_names
        transport = [free_port() for _ in names]
        seeds = ",".join(f"127.0.0.1:{port}" for port in transport)
        settings = {**self.profile.settings, "cluster.name": str(self.cluster_name), "discovery.type": "zen",
                    "discovery.seed_hosts": seeds}
        return [OpenSearchNode(heap=self.heap, transport_port=port, startup_timeout=self.startup_timeout,
                               cluster_name=str(self.cluster_name), settings={**settings, "node.name": name})
                for name, port in zip(names, transport)]

    @property
    def url(self) -> str:
        """The first member's URL: the one clients (ceindex, the tests) talk to."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def name_of(self, index: int) -> str:
        return self.profile.node_names[index]

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Start every member at once (each waits until the cluster has formed), then wait for green."""
        if not self.nodes:
            self.nodes = self._members()
        began = time.monotonic()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            futures = [pool.submit(node.start) for node in self.nodes if not node.running]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            self.stop()
            raise RuntimeError(f"the {len(self.nodes)}-node OpenSearch test cluster did not start: {errors[0]}")
        self.wait_for("green", timeout=self.startup_timeout - (time.monotonic() - began))
        logger.info("OpenSearch test cluster %s: %d nodes green in %.1fs", self.cluster_name, len(self.nodes),
                    time.monotonic() - began)
        return self.url

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (a crash); its data folder and ports are kept for :meth:`restart`."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start member ``index`` again on its data (it rejoins; wait for the status you need afterwards)."""
        self.nodes[index].restart()

    def stop(self) -> None:
        """Stop every member (SIGTERM, SIGKILL after 20 s) and remove their temporary folders."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> "OpenSearchCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- health
    def _live_url(self) -> str:
        for node in self.nodes:
            if node.running:
                return node.url
        raise RuntimeError("no member of the OpenSearch test cluster is running")

    def get(self, path: str, timeout: float = 30.0) -> Any:
        """GET ``path`` (JSON) from a running member, the first one if it runs."""
        with urllib.request.urlopen(f"{self._live_url()}{path}", timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def health(self) -> dict[str, Any]:
        return self.get("/_cluster/health")

    def manager(self) -> str:
        """The node name of the elected cluster manager."""
        return self.get("/_cat/cluster_manager?format=json")[0]["node"]

    def wait_for(self, status: str = "green", nodes: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the cluster is at least ``status`` with ``nodes`` members (default: all running ones)."""
        want = nodes if nodes is not None else sum(node.running for node in self.nodes)
        deadline = time.monotonic() + max(timeout, 1.0)
        last: Any = "no answer yet"
        while True:
            try:
                health = self.get(f"/_cluster/health?wait_for_status={status}&wait_for_nodes={want}&timeout=5s",
                                  timeout=15)
                last = {k: health.get(k) for k in ("status", "number_of_nodes", "unassigned_shards",
                                                   "initializing_shards", "relocating_shards")}
                if (not health.get("timed_out") and health.get("number_of_nodes") == want
                        and STATUS_ORDER.get(health.get("status"), -1) >= STATUS_ORDER[status]):
                    return health
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {n.settings.get('node.name')} ({n.log_path}):\n{tail(n.log_path, 30)}"
                                 for n in self.nodes)
                raise RuntimeError(f"the OpenSearch test cluster was not {status} with {want} nodes within "
                                   f"{timeout:.0f}s (last: {last}); member logs:\n{logs}")
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ceindex.testing.opensearch_cluster",
        description="Run the three-node OpenSearch 2.19.1 test cluster (settings from docker/docker-compose.cluster.yml) "
                    "on loopback in the foreground; prints the members' URLs.",
    )
    parser.add_argument("--heap", default=MAX_MEMBER_HEAP, help="JVM heap per member, at most 512m (default 512m)")
    parser.add_argument("--timeout", type=float, default=420.0, help="startup timeout in seconds (default 420)")
    args = parser.parse_args(argv)

    def _sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    cluster = OpenSearchCluster(heap=args.heap, startup_timeout=args.timeout)
    print("starting the three-node OpenSearch test cluster ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print("\n".join(cluster.urls), flush=True)
        print("green; Ctrl-C to stop", file=sys.stderr, flush=True)
        while all(node.running for node in cluster.nodes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
