"""Integration tests share the session OpenSearch node fixtures of ``tests/conftest.py``."""
