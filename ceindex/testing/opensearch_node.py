"""A real single-node OpenSearch 2.19.1 for tests and local development, without Docker.

The node is the Maven project in ``docker/opensearch-node`` (core, modules and the k-NN and
neural-search plugin zips, all from Maven Central), started as a plain ``java`` process::

    with OpenSearchNode() as node:          # builds the Maven project if needed
        client = OpenSearch(node.url)

    node = OpenSearchNode(port=9200)
    url = node.start()
    node.kill()        # SIGKILL, keeps data dir and ports (simulates a crash)
    node.restart()     # same data dir, same ports
    node.stop()        # SIGTERM (SIGKILL after 20 s), removes the temporary directory

By hand: ``python -m ceindex.testing.opensearch_node --port 9200``.

Limitations: no security plugin (plain HTTP, no auth); the k-NN plugin from Maven Central carries no
native libraries, so only ``"engine": "lucene"`` works (faiss/nmslib mappings are accepted, but
indexing into them fails on the node). Stdlib only.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ceindex.testing.java_node import JavaNode, Launch, find_java_at_least, free_port, maven_package, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO_ROOT / "docker" / "opensearch-node"
PROJECT_DIR_3 = REPO_ROOT / "docker" / "opensearch3-node"  # OpenSearch 3.5.0 + k-NN 3.5.0.0, Java 21+
MAIN_CLASS = "org.ceindex.opensearch.TestNode"

__all__ = ["OpenSearch3Node", "OpenSearchNode", "build_artifacts", "free_port"]


def build_artifacts(project_dir: Path = PROJECT_DIR, *, force: bool = False, java: Path | None = None) -> Path:
    """Run ``mvn package`` in ``project_dir`` if its outputs are missing or older than the sources."""
    target = project_dir / "target"
    needed = [target / "opensearch-node.jar", target / "lib", target / "modules" / "lang-painless",
              target / "plugins" / "opensearch-knn" / "plugin-descriptor.properties"]
    # docker/opensearch3-node compiles the launcher of docker/opensearch-node: a change there rebuilds it too
    shared = (PROJECT_DIR / "src",) if project_dir != PROJECT_DIR else ()
    return maven_package(project_dir, needed, what="OpenSearch test node", force=force, java=java,
                         extra_sources=shared)


@dataclass(eq=False)
class OpenSearchNode(JavaNode):
    """One OpenSearch node in a child ``java`` process (see :class:`JavaNode` for the lifecycle)."""

    project_dir: Path = PROJECT_DIR

    ENGINE = "OpenSearch"
    HOME_PREFIX = "ceindex-opensearch-"

    def _build(self, java: Path) -> Path:
        return build_artifacts(self.project_dir, java=java)

    def _launch(self, java: Path, built: Path, node_settings: dict[str, str]) -> Launch:
        assert self._home is not None
        node_settings = {**node_settings, "path.home": str(self._home)}
        cmd = [
            str(java), f"-Xms{self.heap}", f"-Xmx{self.heap}",
            "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8", f"-Djava.io.tmpdir={self._home / 'tmp'}",
            f"-Dceindex.node.bundles={built}",
            *self.java_opts,
            "-cp", f"{built / 'opensearch-node.jar'}{os.pathsep}{built / 'lib'}{os.sep}*",
            MAIN_CLASS,
            *(f"-E{k}={v}" for k, v in node_settings.items()),
        ]
        return Launch(cmd)


@dataclass(eq=False)
class OpenSearch3Node(OpenSearchNode):
    """OpenSearch 3.5.0 with k-NN 3.5.0.0 (``docker/opensearch3-node``): the same launcher on Java 21+. Maven Central
    serves no transport-grpc module at 3.5.0 (k-NN extends it) and no neural-search for 3.x: a stand-in module lets
    k-NN load (no gRPC), and fusion runs in ceindex."""

    project_dir: Path = PROJECT_DIR_3

    HOME_PREFIX = "ceindex-opensearch3-"

    def _java(self) -> Path:
        return find_java_at_least(21)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ceindex.testing.opensearch_node",
        description="Run the ceindex OpenSearch 2.19.1 test node (k-NN lucene engine, neural-search) in the foreground.",
    )
    parser.add_argument("--port", type=int, default=9200, help="HTTP port on 127.0.0.1 (default 9200; 0 = free port)")
    parser.add_argument("--v3", action="store_true", help="OpenSearch 3.5.0 + k-NN (Java 21+) instead of 2.19.1")
    parser.add_argument("--transport-port", type=int, default=None, help="transport port (default: a free one)")
    parser.add_argument("--heap", default="512m", help="JVM heap, at most 1g (default 512m)")
    parser.add_argument("--data", default=None, help="persistent data directory (default: temporary, removed on exit)")
    parser.add_argument("--timeout", type=float, default=180.0, help="startup timeout in seconds (default 180)")
    parser.add_argument("-E", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="extra node setting, repeatable")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-E expects KEY=VALUE, got {item!r}")
        extra[key] = value
    node = (OpenSearch3Node if args.v3 else OpenSearchNode)(port=args.port or None, transport_port=args.transport_port, heap=args.heap,
                          data_dir=args.data, startup_timeout=args.timeout, settings=extra)
    def _sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    print("starting the OpenSearch test node ...", file=sys.stderr, flush=True)
    try:
        url = node.start()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"OpenSearch test node ready at {url} in {node.startup_seconds:.1f}s "
          f"(log {node.log_path}, data {node.data_path}); Ctrl-C to stop", file=sys.stderr, flush=True)
    print(url, flush=True)
    try:
        while node.running:
            time.sleep(0.5)
        print(f"the node exited; last lines of {node.log_path}:\n{tail(node.log_path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr, flush=True)
        return 0
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
