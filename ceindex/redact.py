"""Credentials never reach output, logs or reports: ``scheme://user:password@host`` becomes ``scheme://***@host``."""
from __future__ import annotations

import logging
import re
from typing import Any

# greedy up to the last "@" before the host's "/" (an unencoded "@" in a password stays hidden too)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*(?:@[^/\s@]*)*@")


def redact(text: str) -> str:
    """``text`` with the user-info part of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def redact_deep(value: Any) -> Any:
    """A copy of nested dicts/lists/strings with every string passed through :func:`redact`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_deep(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_deep(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A handler filter that redacts URL credentials in the formatted message and in any traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "@" in record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
