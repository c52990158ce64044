"""What the OpenSearch and the Elasticsearch test nodes share: a search engine in a child ``java`` process.

:class:`JavaNode` owns the lifecycle (free ports, a temporary home, start, health check, SIGKILL, restart on the
same data, stop); a subclass says how its engine is built (a Maven project under ``docker/``) and launched.
Stdlib only.
"""
from __future__ import annotations

import atexit
import base64
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

JAVA_HOME_ENVS = ("CEINDEX_JAVA_HOME", "JAVA_HOME")
MAX_HEAP_BYTES = 1024**3
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 80
_BUILD_STAMP = ".ceindex-build-stamp"

_live_nodes: "set[JavaNode]" = set()


def heap_bytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", heap.strip().lower())
    if not match:
        raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
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


def java_home(java: Path) -> str:
    """The JDK folder of a java binary (``.../bin/java`` -> ``...``; /usr/bin/java is followed to its JDK)."""
    return str(java.resolve().parent.parent)


def java_version(java: Path) -> int:
    """The feature version (17, 21, 25, ...) of a java binary; 0 when it cannot be read."""
    proc = subprocess.run([str(java), "-version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    match = re.search(r'version "(\d+)', proc.stdout)
    return int(match.group(1)) if match else 0


def find_java_at_least(major: int) -> Path:
    """A java binary of version ``major`` or newer: $CEINDEX_JAVA<major>_HOME, the default one (find_java), or the
    newest JDK under /usr/lib/jvm."""
    env = f"CEINDEX_JAVA{major}_HOME"
    if os.environ.get(env):
        return Path(os.environ[env]) / "bin" / "java"
    default = find_java()
    if java_version(default) >= major:
        return default
    found = sorted(((java_version(j), j) for j in Path("/usr/lib/jvm").glob("*/bin/java")), reverse=True)
    if found and found[0][0] >= major:
        return found[0][1]
    raise RuntimeError(f"this node needs Java {major}+, but {default} is Java {java_version(default)} and none newer is "
                       f"under /usr/lib/jvm; install one (e.g. Temurin 25) or point {env} at it")


def tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return "(no log)"
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


def maven_package(project_dir: Path, needed: list[Path], *, what: str, force: bool = False,
                  java: Path | None = None, extra_sources: tuple[Path, ...] = ()) -> Path:
    """Run ``mvn package`` in ``project_dir`` if any of ``needed`` is missing or older than the sources.

    Returns the ``target`` directory. Tries offline mode first (fast, works without network once ~/.m2 is
    populated), then online. Serialised between processes with a file lock.
    """
    target = project_dir / "target"
    stamp = target / _BUILD_STAMP
    sources = [project_dir / "pom.xml", project_dir / "src", *extra_sources]

    def up_to_date() -> bool:
        return stamp.exists() and all(p.exists() for p in needed) and stamp.stat().st_mtime >= _newest_mtime(sources)

    if not force and up_to_date():
        return target
    lock_path = Path(tempfile.gettempdir()) / f"ceindex-{project_dir.name}-build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and up_to_date():  # another process built it while we waited
            return target
        mvn = shutil.which("mvn")
        if not mvn:
            raise RuntimeError(
                f"Maven (mvn) not found; it is needed once to build the {what} in {project_dir} "
                "(apt-get install maven, or run `mvn -q -B package -DskipTests` there yourself)"
            )
        env = dict(os.environ)
        env["JAVA_HOME"] = java_home(java or find_java())
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
            f"building the {what} failed in {project_dir} (needs Maven Central access on the first build):\n{detail}"
        )


@dataclass
class Launch:
    """How to start one engine process."""

    cmd: list[str]
    env: dict[str, str] | None = None
    user: int | None = None  # run as this uid (and ``group``) instead of ours
    group: int | None = None


@dataclass(eq=False)
class JavaNode:
    """One search-engine node in a child process (and its children: the whole process group is signalled).

    ``port``/``transport_port`` None = pick free ports (kept across :meth:`restart`). ``data_dir`` None = a
    temporary directory removed by :meth:`stop`; a given ``data_dir`` is created if needed and never removed.
    """

    port: int | None = None
    heap: str = "512m"
    startup_timeout: float = 180.0
    data_dir: str | Path | None = None
    transport_port: int | None = None
    cluster_name: str = "ceindex-test"
    settings: dict[str, str] = field(default_factory=dict)
    java_opts: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _home: Path | None = field(default=None, init=False, repr=False)
    _http_port: int | None = field(default=None, init=False, repr=False)
    _transport_port: int | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    startup_seconds: float | None = field(default=None, init=False)

    ENGINE = "search engine"  # for messages
    HOME_PREFIX = "ceindex-node-"
    scheme = "http"

    def __post_init__(self) -> None:
        if heap_bytes(self.heap) > MAX_HEAP_BYTES:
            raise ValueError(f"heap {self.heap} is above the 1g maximum of the test node")

    # ----------------------------------------------------------------- subclass hooks
    def _java(self) -> Path:
        """The java binary that runs (and builds) this node."""
        return find_java()

    def _build(self, java: Path) -> Path:
        """Build (once) what the node runs from; returns the folder it is in."""
        raise NotImplementedError

    def _launch(self, java: Path, built: Path, node_settings: dict[str, str]) -> Launch:
        """The command (and user) that starts the node with ``node_settings``; the home is ready."""
        raise NotImplementedError

    def _health_request(self, url: str) -> tuple[urllib.request.Request, dict[str, Any]]:
        """The health request and the ``urlopen`` keyword arguments (TLS context) it needs."""
        return urllib.request.Request(url), {}

    # ----------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        if self._http_port is None:
            raise RuntimeError(f"the {self.ENGINE} test node has not been started")
        return f"{self.scheme}://{self.host}:{self._http_port}"

    @property
    def home(self) -> Path | None:
        """The node's temporary home (config, logs, node.log and, by default, data)."""
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
        """Start the node (building it first if needed); returns its base URL.

        After :meth:`kill` this restarts on the same data directory and ports.
        """
        if self.running:
            return self.url
        java = self._java()
        built = self._build(java)
        if self._home is None:
            self._home = Path(tempfile.mkdtemp(prefix=self.HOME_PREFIX))
        self._pick_ports()
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
            "path.data": str(data),
            "path.logs": str(self._home / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            **{k: str(v) for k, v in self.settings.items()},
        }
        launch = self._launch(java, built, node_settings)
        self._spawn(launch)
        return self.url

    def _pick_ports(self) -> None:
        if self._http_port is None:
            self._http_port = self.port or free_port(self.host)
        if self._transport_port is None:
            self._transport_port = self.transport_port or free_port(self.host)
        for what, port in (("HTTP", self._http_port), ("transport", self._transport_port)):
            if not port_free(port, self.host):
                raise RuntimeError(
                    f"{what} port {port} on {self.host} is already in use; is another {self.ENGINE} running? "
                    "(pick another --port, or leave it unset for a free one)"
                )

    def _spawn(self, launch: Launch) -> None:
        assert self.log_path is not None and self._home is not None
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== ceindex: starting {' '.join(launch.cmd)}\n".encode())
        self._log.flush()
        began = time.monotonic()
        extra: dict[str, Any] = {}
        if launch.user is not None:
            extra = {"user": launch.user, "group": launch.group, "extra_groups": []}
        self._proc = subprocess.Popen(launch.cmd, cwd=self._home, env=launch.env, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, **extra)
        _live_nodes.add(self)
        try:
            self._wait_healthy(began)
        except BaseException:
            self._terminate(graceful=False)
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_healthy(self, began: float) -> None:
        deadline = began + self.startup_timeout
        request, kwargs = self._health_request(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s")
        last_error = "no answer yet"
        while True:
            code = self._proc.poll() if self._proc else -1
            if code is not None:
                raise RuntimeError(
                    f"the {self.ENGINE} test node exited with code {code} during startup "
                    f"({time.monotonic() - began:.1f}s after launch); log {self.log_path}, last "
                    f"{LOG_TAIL_LINES} lines:\n{tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(request, timeout=5, **kwargs) as resp:
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
                    f"the {self.ENGINE} test node at {self.url} was not healthy (yellow/green) within "
                    f"{self.startup_timeout:.0f}s (last: {last_error}); log {self.log_path}, last "
                    f"{LOG_TAIL_LINES} lines:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def _terminate(self, *, graceful: bool) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                if graceful:
                    _signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc, signal.SIGKILL)
                else:
                    _signal_group(proc, signal.SIGKILL)
            code = proc.wait()
            _signal_group(proc, signal.SIGKILL)  # children (e.g. Elasticsearch's server JVM) must not outlive it
            _wait_group_gone(proc.pid)
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

    def __enter__(self) -> "JavaNode":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the node's whole process group (it was started in a session of its own)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout: float = STOP_GRACE_S) -> None:
    """Wait until no process of the group is left (a killed child JVM still holds the node's ports a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tls_context(ca_certs: str | Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_certs) if ca_certs else None)


@atexit.register
def stop_leftovers() -> None:
    for node in list(_live_nodes):
        try:
            node.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass
