"""Cluster failures become clear errors: a port that accepts but never answers, and one that refuses."""
from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from ceindex.backends.opensearch import OpenSearchBackend
from ceindex.config import OpenSearchConfig
from ceindex.errors import BackendError


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte (a hung cluster)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_hung_cluster_times_out_with_advice(silent_port: int) -> None:
    backend = OpenSearchBackend(OpenSearchConfig(url=f"http://127.0.0.1:{silent_port}", timeout=0.5, max_retries=0))
    with pytest.raises(BackendError, match="timed out while connecting; raise --timeout"):
        backend.ping()


def test_unreachable_cluster_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenSearchBackend(OpenSearchConfig(url=f"http://127.0.0.1:{port}", timeout=1, max_retries=0))
    with pytest.raises(BackendError, match=f"cannot reach OpenSearch at http://127.0.0.1:{port}"):
        backend.ping()
