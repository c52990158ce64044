"""A real single-node Elasticsearch 8.19.21 for tests and local development, without Docker.

The node is the integ-test-zip distribution from Maven Central, unpacked by the Maven project in
``docker/elasticsearch-node`` (server, transport-netty4, x-pack-core and x-pack-security; no JDK, no
analysis-common, so no ``english`` analyzer: the project's stable plugin ``ceindex-analysis-english`` adds it back as
``ceindex_english``, Lucene's EnglishAnalyzer). Each node runs from a private copy of it in a temporary home::

    with ElasticsearchNode() as node:                     # plain HTTP, security off
        client = Elasticsearch(node.url)

    node = ElasticsearchNode(security=SecurityFiles(...))  # TLS + basic auth, file-realm users and roles
    node.kill(); node.restart(); node.stop()               # as OpenSearchNode

Elasticsearch refuses to run as root: run as root (CI), the node runs as the system user ``ceindex-es``
(created with ``useradd`` on first use) and its home is handed to that user.

By hand: ``python -m ceindex.testing.elasticsearch_node --port 9201``. Stdlib only.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceindex.testing.java_node import (
    JavaNode,
    Launch,
    basic_auth_header,
    java_home,
    maven_package,
    tail,
    tls_context,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO_ROOT / "docker" / "elasticsearch-node"
VERSION = "8.19.21"
RUN_AS_USER = "ceindex-es"
ANALYSIS_PLUGIN = "ceindex-analysis-english"  # the ``ceindex_english`` analyzer (Lucene's EnglishAnalyzer)


def build_distribution(project_dir: Path = PROJECT_DIR, *, force: bool = False, java: Path | None = None) -> Path:
    """Unpack the distribution with Maven (once); returns its folder."""
    dist = project_dir / "target" / f"elasticsearch-{VERSION}"
    needed = [dist / "bin" / "elasticsearch", dist / "lib" / f"elasticsearch-{VERSION}.jar",
              dist / "modules" / "x-pack-security", project_dir / "target" / "plugins" / ANALYSIS_PLUGIN / f"{ANALYSIS_PLUGIN}.jar"]
    maven_package(project_dir, needed, what="Elasticsearch test node", force=force, java=java)
    return dist


@dataclass
class FileUser:
    password: str
    roles: list[str]


@dataclass
class SecurityFiles:
    """Security on: HTTP over TLS with ``cert``/``key`` (PEM), basic auth against file-realm ``users``;
    ``roles_yml`` defines extra roles; ``ca_certs`` verifies the node in the health check."""

    cert: Path
    key: Path
    ca_certs: Path
    users: dict[str, FileUser]
    roles_yml: str = ""
    admin: str = ""  # the user the health check authenticates as (default: the first)


def unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to run the node as: None when we are not root, else the ``ceindex-es`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                               RUN_AS_USER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode not in (0, 9):  # 9: created by a concurrent process in between
            raise RuntimeError(f"Elasticsearch refuses to run as root and creating the user {RUN_AS_USER} failed "
                               f"(useradd exit {proc.returncode}): {proc.stdout.strip()}")
        entry = pwd.getpwnam(RUN_AS_USER)
    return entry.pw_uid, entry.pw_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)


@dataclass(eq=False)
class ElasticsearchNode(JavaNode):
    """One Elasticsearch node (its CLI launcher and server JVM) in a process group of its own."""

    project_dir: Path = PROJECT_DIR
    security: SecurityFiles | None = None
    _installed: bool = field(default=False, init=False, repr=False)

    ENGINE = "Elasticsearch"
    HOME_PREFIX = "ceindex-elasticsearch-"

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return "https" if self.security else "http"

    @property
    def es_home(self) -> Path:
        assert self._home is not None
        return self._home / "es"

    def _build(self, java: Path) -> Path:
        return build_distribution(self.project_dir, java=java)

    def _launch(self, java: Path, built: Path, node_settings: dict[str, str]) -> Launch:
        assert self._home is not None
        if not self._installed:
            self._install(java, built)
        run_as = unprivileged_user()
        if run_as is not None:
            _chown_tree(self._home, *run_as)
            if self.data_dir is not None:
                _chown_tree(Path(self.data_dir).resolve(), *run_as)
        settings = {
            **node_settings,
            "xpack.security.enabled": "true" if self.security else "false",
            **(self._security_settings() if self.security else {}),
            **{k: str(v) for k, v in self.settings.items()},
        }
        cmd = [str(self.es_home / "bin" / "elasticsearch"), *(f"-E{k}={v}" for k, v in settings.items())]
        return Launch(cmd, env=self._env(java), user=run_as[0] if run_as else None,
                      group=run_as[1] if run_as else None)

    def _env(self, java: Path) -> dict[str, str]:
        assert self._home is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "CLI_JAVA"))}
        env.update({
            "ES_JAVA_HOME": java_home(java),
            "ES_JAVA_OPTS": " ".join([f"-Xms{self.heap}", f"-Xmx{self.heap}", *self.java_opts]),
            "ES_PATH_CONF": str(self.es_home / "config"),
            "ES_TMPDIR": str(self._home / "tmp"),
            "HOME": str(self._home),
        })
        return env

    def _install(self, java: Path, dist: Path) -> None:
        """A private copy of the distribution (its config is written per node) with the security files in it."""
        shutil.copytree(dist, self.es_home, symlinks=True)
        shutil.copytree(dist.parent / "plugins" / ANALYSIS_PLUGIN, self.es_home / "plugins" / ANALYSIS_PLUGIN)
        if self.security:
            sec = self.security
            certs = self.es_home / "config" / "certs"
            certs.mkdir()
            shutil.copy(sec.cert, certs / "node.crt")
            shutil.copy(sec.key, certs / "node.key")
            shutil.copy(sec.ca_certs, certs / "ca.crt")
            if sec.roles_yml:
                (self.es_home / "config" / "roles.yml").write_text(sec.roles_yml, encoding="utf-8")
            for name, user in sec.users.items():
                self._add_file_user(java, name, user)
        self._installed = True

    def _add_file_user(self, java: Path, name: str, user: FileUser) -> None:
        cmd = [str(self.es_home / "bin" / "elasticsearch-users"), "useradd", name, "-p", user.password,
               "-r", ",".join(user.roles)]
        proc = subprocess.run(cmd, env=self._env(java), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"elasticsearch-users useradd {name} failed (exit {proc.returncode}): "
                               f"{proc.stdout.replace(user.password, '***')[-2000:]}")

    @staticmethod
    def _security_settings() -> dict[str, str]:
        return {
            "xpack.security.http.ssl.enabled": "true",
            "xpack.security.http.ssl.certificate": "certs/node.crt",
            "xpack.security.http.ssl.key": "certs/node.key",
            "xpack.security.http.ssl.certificate_authorities": "certs/ca.crt",
            "xpack.security.transport.ssl.enabled": "false",
            "xpack.security.authc.realms.file.file1.order": "0",
        }

    def _health_request(self, url: str) -> tuple[urllib.request.Request, dict[str, Any]]:
        if not self.security:
            return urllib.request.Request(url), {}
        sec = self.security
        admin = sec.admin or next(iter(sec.users))
        request = urllib.request.Request(url, headers={"Authorization": basic_auth_header(admin, sec.users[admin].password)})
        return request, {"context": tls_context(sec.ca_certs)}

    def stop(self) -> None:
        super().stop()
        self._installed = False

    def __enter__(self) -> "ElasticsearchNode":
        self.start()
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ceindex.testing.elasticsearch_node",
        description=f"Run the ceindex Elasticsearch {VERSION} test node (plain HTTP, security off) in the foreground.",
    )
    parser.add_argument("--port", type=int, default=9201, help="HTTP port on 127.0.0.1 (default 9201; 0 = free port)")
    parser.add_argument("--heap", default="512m", help="JVM heap, at most 1g (default 512m)")
    parser.add_argument("--data", default=None, help="persistent data directory (default: temporary, removed on exit)")
    parser.add_argument("--timeout", type=float, default=180.0, help="startup timeout in seconds (default 180)")
    args = parser.parse_args(argv)
    node = ElasticsearchNode(port=args.port or None, heap=args.heap, data_dir=args.data, startup_timeout=args.timeout)

    def _sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    print("starting the Elasticsearch test node ...", file=sys.stderr, flush=True)
    try:
        url = node.start()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Elasticsearch test node ready at {url} in {node.startup_seconds:.1f}s (log {node.log_path}); "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
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
