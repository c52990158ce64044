"""Backends: ``open_backend`` picks OpenSearch or Elasticsearch (detected) when a cluster URL is configured, else the
embedded store."""
from __future__ import annotations

import logging

from ceindex.backends.base import Backend, BuildState, Hit, IndexInfo, IndexSettings
from ceindex.config import Settings
from ceindex.redact import redact

__all__ = ["Backend", "BuildState", "Hit", "IndexInfo", "IndexSettings", "open_backend"]
logger = logging.getLogger(__name__)


def open_backend(settings: Settings) -> Backend:
    """The embedded store, or the backend of the engine found at the cluster URL (OpenSearch or Elasticsearch)."""
    if settings.opensearch.url:
        from ceindex.backends.detect import ELASTICSEARCH, detect_engine

        engine = detect_engine(settings.opensearch)
        logger.info("cluster %s runs %s", redact(settings.opensearch.url), engine)
        kwargs = {"chunk_docs": settings.build.chunk_docs, "chunk_bytes": settings.build.chunk_bytes}
        backend: Backend
        if engine.name == ELASTICSEARCH:
            from ceindex.backends.elasticsearch import ElasticsearchBackend

            backend = ElasticsearchBackend(settings.opensearch, **kwargs)
        else:
            from ceindex.backends.opensearch import OpenSearchBackend

            backend = OpenSearchBackend(settings.opensearch, **kwargs)
        backend.ping()
        return backend
    from ceindex.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.home_path)
