"""Test helpers for HTTP: a free loopback port, and a real uvicorn server running an app in a thread."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Any, *, as_served: bool = False) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL; stop it after.
    ``as_served``: with the uvicorn settings of ``ceindex serve`` (connection limit, header deadline)."""
    import uvicorn

    from search_pipeline.server import server_config

    port = free_port()
    config = (server_config(app, "127.0.0.1", port, log_level="warning") if as_served
              else uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def build_sample_index(settings: Any) -> Any:
    """Build the sample corpus into ``settings.index`` (embedded store under ``settings.home``) with its encoder;
    rejects go to ``<home>/rejects.jsonl``. Returns ``settings``."""
    from pathlib import Path

    from ceindex.backends import open_backend
    from ceindex.data.corpus import corpus_path
    from ceindex.models import load_encoder
    from indexer.build import build_index
    from tests.conftest import SAMPLE

    backend = open_backend(settings)
    try:
        build_index(backend, load_encoder(settings.encoder), corpus_path(SAMPLE, None), settings.index, settings.build,
                    rejects_path=Path(settings.home) / "rejects.jsonl", progress=False)
    finally:
        backend.close()
    return settings
