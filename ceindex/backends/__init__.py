"""Backends: ``open_backend`` picks OpenSearch when a URL is configured, else the embedded store."""
from __future__ import annotations

from ceindex.backends.base import Backend, BuildState, Hit, IndexInfo, IndexSettings
from ceindex.config import Settings

__all__ = ["Backend", "BuildState", "Hit", "IndexInfo", "IndexSettings", "open_backend"]


def open_backend(settings: Settings) -> Backend:
    if settings.opensearch.url:
        from ceindex.backends.opensearch import OpenSearchBackend

        backend = OpenSearchBackend(
            settings.opensearch, chunk_docs=settings.build.chunk_docs, chunk_bytes=settings.build.chunk_bytes
        )
        backend.ping()
        return backend
    from ceindex.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.home_path)
