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
import atexit
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO_ROOT / "docker" / "opensearch-node"
MAIN_CLASS = "org.ceindex.opensearch.TestNode"
JAVA_HOME_ENVS = ("CEINDEX_JAVA_HOME", "JAVA_HOME")
MAX_HEAP_BYTES = 1024**3
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 80
_BUILD_STAMP = ".ceindex-build-stamp"

_live_nodes: "set[OpenSearchNode]" = set()


def _heap_bytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", heap.strip().lower())
    if not match:
        raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_java() -> Path:
    """The java binary: $CEINDEX_JAVA_HOME/bin/java, $JAVA_HOME/bin/java, or java on PATH."""
    for env in JAVA_HOME_ENVS:
        home = os.environ.get(env)
        if home:
            java = Path(home) / "bin" / "java"
            if not java.is_file():
                raise RuntimeError(f"{env}={home} but {java} does not exist")
            return java
    found = shutil.which("java")
    if not found:
        raise RuntimeError(
            "java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless) "
            "or point CEINDEX_JAVA_HOME / JAVA_HOME at one"
        )
    return Path(found)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError as exc:
        return f"(no log: {exc})"


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for root in paths:
        if root.is_file():
            newest = max(newest, root.stat().st_mtime)
        elif root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    newest = max(newest, (Path(dirpath) / name).stat().st_mtime)
    return newest


def build_artifacts(project_dir: Path = PROJECT_DIR, *, force: bool = False, java: Path | None = None) -> Path:
    """Run ``mvn package`` in ``project_dir`` if its outputs are missing or older than the sources.

    Returns the ``target`` directory. Tries offline mode first (fast, works without network once
    ~/.m2 is populated), then online. Serialised between processes with a file lock.
    """
    target = project_dir / "target"
    stamp = target / _BUILD_STAMP
    sources = [project_dir / "pom.xml", project_dir / "src"]

    def up_to_date() -> bool:
        needed = [target / "opensearch-node.jar", target / "lib", target / "modules" / "lang-painless",
                  target / "plugins" / "opensearch-knn" / "plugin-descriptor.properties"]
        return stamp.exists() and all(p.exists() for p in needed) and stamp.stat().st_mtime >= _newest_mtime(sources)

    if not force and up_to_date():
        return target
    lock_path = Path(tempfile.gettempdir()) / "ceindex-opensearch-node-build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and up_to_date():  # another process built it while we waited
            return target
        mvn = shutil.which("mvn")
        if not mvn:
            raise RuntimeError(
                f"Maven (mvn) not found; it is needed once to build the test node in {project_dir} "
                "(apt-get install maven, or run `mvn -q -B package -DskipTests` there yourself)"
            )
        java = java or find_java()
        env = dict(os.environ)
        env["JAVA_HOME"] = (os.environ.get("CEINDEX_JAVA_HOME") or os.environ.get("JAVA_HOME")
                            or str(java.resolve().parent.parent))
        attempts = []
        for extra in (["-o"], []):
            cmd = [mvn, "-q", "-B", *extra, "package", "-DskipTests"]
            proc = subprocess.run(cmd, cwd=project_dir, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode == 0:
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.touch()
                return target
            attempts.append((" ".join(cmd), proc.stdout[-4000:]))
        detail = "\n".join(f"$ {cmd}\n{out}" for cmd, out in attempts)
        raise RuntimeError(
            f"building the OpenSearch test node failed in {project_dir} (needs Maven Central access on the "
            f"first build):\n{detail}"
        )


@dataclass(eq=False)
class OpenSearchNode:
    """One OpenSearch node in a child ``java`` process.

    ``port``/``transport_port`` None = pick free ports (kept across :meth:`restart`). ``data_dir``
    None = a temporary directory removed by :meth:`stop`; a given ``data_dir`` is created if needed
    and never removed.
    """

    port: int | None = None
    heap: str = "512m"
    startup_timeout: float = 180.0
    data_dir: str | Path | None = None
    transport_port: int | None = None
    cluster_name: str = "ceindex-test"
    settings: dict[str, str] = field(default_factory=dict)
    java_opts: list[str] = field(default_factory=list)
    project_dir: Path = PROJECT_DIR
    host: str = "127.0.0.1"

    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _home: Path | None = field(default=None, init=False, repr=False)
    _http_port: int | None = field(default=None, init=False, repr=False)
    _transport_port: int | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    startup_seconds: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if _heap_bytes(self.heap) > MAX_HEAP_BYTES:
            raise ValueError(f"heap {self.heap} is above the 1g maximum of the test node")

    # ----------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        if self._http_port is None:
            raise RuntimeError("the OpenSearch test node has not been started")
        return f"http://{self.host}:{self._http_port}"

    @property
    def home(self) -> Path | None:
        """The node's path.home (temporary directory; holds config/, logs/, node.log, data/)."""
        return self._home

    @property
    def log_path(self) -> Path | None:
        return self._home / "node.log" if self._home else None

    @property
    def data_path(self) -> Path | None:
        if self.data_dir is not None:
            return Path(self.data_dir).resolve()
        return self._home / "data" if self._home else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Start the node (building the Maven project first if needed); returns its base URL.

        After :meth:`kill` this restarts on the same data directory and ports.
        """
        if self.running:
            return self.url
        java = find_java()
        target = build_artifacts(self.project_dir, java=java)
        if self._home is None:
            self._home = Path(tempfile.mkdtemp(prefix="ceindex-opensearch-"))
        if self._http_port is None:
            self._http_port = self.port or free_port(self.host)
        if self._transport_port is None:
            self._transport_port = self.transport_port or free_port(self.host)
        for what, port in (("HTTP", self._http_port), ("transport", self._transport_port)):
            if not _port_free(port, self.host):
                raise RuntimeError(
                    f"{what} port {port} on {self.host} is already in use; is another OpenSearch running? "
                    "(pick another --port, or leave it unset for a free one)"
                )
        data = self.data_path
        assert data is not None
        data.mkdir(parents=True, exist_ok=True)
        (self._home / "tmp").mkdir(exist_ok=True)
        node_settings = {
            "cluster.name": self.cluster_name,
            "node.name": "ceindex-test-node",
            "network.host": self.host,
            "http.port": str(self._http_port),
            "transport.port": str(self._transport_port),
            "discovery.type": "single-node",
            "path.home": str(self._home),
            "path.data": str(data),
            "path.logs": str(self._home / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            **{k: str(v) for k, v in self.settings.items()},
        }
        cmd = [
            str(java), f"-Xms{self.heap}", f"-Xmx{self.heap}",
            "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8", f"-Djava.io.tmpdir={self._home / 'tmp'}",
            f"-Dceindex.node.bundles={target}",
            *self.java_opts,
            "-cp", f"{target / 'opensearch-node.jar'}{os.pathsep}{target / 'lib'}{os.sep}*",
            MAIN_CLASS,
            *(f"-E{k}={v}" for k, v in node_settings.items()),
        ]
        assert self.log_path is not None
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== ceindex: starting {' '.join(cmd)}\n".encode())
        self._log.flush()
        began = time.monotonic()
        self._proc = subprocess.Popen(cmd, cwd=self._home, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        _live_nodes.add(self)
        try:
            self._wait_healthy(began)
        except BaseException:
            self._terminate(graceful=False)
            raise
        self.startup_seconds = time.monotonic() - began
        return self.url

    def _wait_healthy(self, began: float) -> None:
        deadline = began + self.startup_timeout
        health = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s"
        last_error = "no answer yet"
        while True:
            code = self._proc.poll() if self._proc else -1
            if code is not None:
                raise RuntimeError(
                    f"the OpenSearch test node exited with code {code} during startup "
                    f"({time.monotonic() - began:.1f}s after launch); log {self.log_path}, last "
                    f"{LOG_TAIL_LINES} lines:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(health, timeout=5) as resp:
                    status = json.loads(resp.read().decode()).get("status")
                if status in ("green", "yellow"):
                    return
                last_error = f"cluster status {status}"
            except urllib.error.HTTPError as exc:  # 408 = not yellow within the request timeout
                last_error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the OpenSearch test node at {self.url} was not healthy (yellow/green) within "
                    f"{self.startup_timeout:.0f}s (last: {last_error}); log {self.log_path}, last "
                    f"{LOG_TAIL_LINES} lines:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def _terminate(self, *, graceful: bool) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                if graceful:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                else:
                    proc.kill()
            code = proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL the node (a crash): data directory, ports and log are kept for :meth:`restart`."""
        self._terminate(graceful=False)

    def restart(self) -> str:
        """Start again on the same data directory and ports (graceful stop first if it is running)."""
        if self.running:
            self._terminate(graceful=True)
        return self.start()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s, then remove the temporary directory (a given data_dir is kept)."""
        self._terminate(graceful=True)
        _live_nodes.discard(self)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
        self._home = None
        self._http_port = None
        self._transport_port = None

    def __enter__(self) -> "OpenSearchNode":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for node in list(_live_nodes):
        try:
            node.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ceindex.testing.opensearch_node",
        description="Run the ceindex OpenSearch 2.19.1 test node (k-NN lucene engine, neural-search) in the foreground.",
    )
    parser.add_argument("--port", type=int, default=9200, help="HTTP port on 127.0.0.1 (default 9200; 0 = free port)")
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
    node = OpenSearchNode(port=args.port or None, transport_port=args.transport_port, heap=args.heap,
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
        print(f"the node exited; last lines of {node.log_path}:\n{_tail(node.log_path)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr, flush=True)
        return 0
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
