"""Exceptions with actionable messages; the CLI catches ``CeindexError`` once and prints it."""
from __future__ import annotations


class CeindexError(Exception):
    """Base class for every error ceindex reports to a user."""


class ConfigError(CeindexError):
    """A configuration file, key or flag value is wrong."""


class InputError(CeindexError):
    """Input data (corpus, queries, qrels) cannot be used."""


class ModelError(CeindexError):
    """A model cannot be loaded or does not fit the requested use."""


class BackendError(CeindexError):
    """The index store (OpenSearch or embedded) refused or failed."""


class EncoderMismatchError(BackendError):
    """An index was built with a different encoder than the one requested."""
