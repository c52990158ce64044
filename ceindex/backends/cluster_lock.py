"""One builder per index on a cluster: a lock document per alias, created atomically, kept alive by a heartbeat.

``LOCKS_INDEX/_doc/ALIAS`` is created with ``op_type=create`` (only one builder gets it) and carries a random
token. A thread rewrites it every ``heartbeat_s`` with compare-and-set on its sequence number, so a builder that
lost the lock finds out (and stops before it publishes). A second builder never trusts another machine's clock:
it watches the document's sequence number on its own clock and takes the lock over (compare-and-set again)
only when it has not moved for ``stale_s`` — or at once when the holder is this very process, which no longer
holds it. Release deletes the document only while it is still ours.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ceindex.backends.base import lock_holder
from ceindex.backends.names import LOCKS_INDEX
from ceindex.errors import BackendError

logger = logging.getLogger(__name__)

HEARTBEAT_S, STALE_S = 10.0, 60.0
_HELD_TOKENS: set[str] = set()  # tokens of the locks this process holds right now
_PROCESS = uuid.uuid4().hex  # this process, unlike (host name, pid), which containers repeat


@dataclass(frozen=True)
class ClientErrors:
    """The exception classes of one cluster client (opensearch-py or elasticsearch-py), so the code that drives
    either can tell a missing index, a version conflict or a refused login apart."""

    not_found: type[Exception]
    conflict: type[Exception]
    bad_request: type[Exception]
    unauthorized: type[Exception]
    forbidden: type[Exception]
    timeout: type[Exception]
    tls: type[Exception]
    connection: type[Exception]
    api: tuple[type[Exception], ...]  # every error of the client that is to be translated into a BackendError


class LostLock(BackendError):
    """Another builder took this build's lock over; the build stops without publishing."""


class ClusterBuildLock:
    """Build locks on one cluster (``client``: an opensearch-py or elasticsearch-py client; ``translate``: turns its
    errors into BackendError; ``conflict``: the error for a lock held by someone else; ``errors``: its classes)."""

    def __init__(self, client: Any, translate: Callable[[Exception, str], BackendError],
                 conflict: Callable[[str, str], BackendError], errors: ClientErrors) -> None:
        self.client, self._translate, self._conflict, self.errors = client, translate, conflict, errors
        self._lost: dict[str, threading.Event] = {}
        self._tokens: dict[str, str] = {}
        self.heartbeat_s, self.stale_s = HEARTBEAT_S, STALE_S

    @contextmanager
    def hold(self, alias: str) -> Iterator[None]:
        self._ensure_index()
        token = uuid.uuid4().hex
        version = [self._acquire(alias, token)]
        _HELD_TOKENS.add(token)
        lost, stop = threading.Event(), threading.Event()
        self._lost[alias], self._tokens[alias] = lost, token
        beat = threading.Thread(target=self._heartbeat, args=(alias, token, version, lost, stop), daemon=True,
                                name=f"ceindex-lock-{alias}")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=30)
            self._release(alias, version[0], lost)
            _HELD_TOKENS.discard(token)
            self._lost.pop(alias, None)
            self._tokens.pop(alias, None)

    def check(self, alias: str, *, verify: bool = False) -> None:
        """Raise LostLock when this process held ``alias``'s lock and another builder has taken it over;
        ``verify`` reads the lock document now (before a step that cannot be undone, e.g. moving the alias)."""
        lost = self._lost.get(alias)
        if lost is None:
            return
        if verify and not lost.is_set():
            try:
                held = self.client.get(index=LOCKS_INDEX, id=alias)["_source"]
            except Exception as exc:  # noqa: BLE001 - a missing lock document is a lost lock too
                logger.error("cannot confirm the build lock of %s: %s", alias, type(exc).__name__)
                held = {}
            if held.get("token") != self._tokens.get(alias):
                lost.set()
        if lost.is_set():
            raise LostLock(
                f"the build lock of '{alias}' was taken over by another builder (this one was paused or cut off "
                f"from the cluster for over {self.stale_s:.0f} s); this build stops here and publishes nothing"
            )

    # ------------------------------------------------------------------ steps
    def _body(self, token: str) -> dict[str, Any]:
        return {"owner": lock_holder(), "pid": os.getpid(), "host": socket.gethostname(), "process": _PROCESS,
                "token": token, "heartbeat": time.time()}

    def _ensure_index(self) -> None:
        try:
            if self.client.indices.exists(index=LOCKS_INDEX):
                return
            body = {"settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
                    "mappings": {"dynamic": False, "properties": {}}}
            self.client.indices.create(index=LOCKS_INDEX, body=body)
        except self.errors.bad_request as exc:  # created by a concurrent builder in between
            if "already_exists" not in str(exc):
                raise self._translate(exc, "creating the build-lock index") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "creating the build-lock index") from exc

    def _acquire(self, alias: str, token: str) -> tuple[int, int]:
        watched: tuple[int, int] | None = None
        deadline = 0.0
        while True:
            try:
                done = self.client.index(index=LOCKS_INDEX, id=alias, body=self._body(token), op_type="create",
                                         refresh=True)
                return done["_seq_no"], done["_primary_term"]
            except self.errors.conflict:
                pass
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, f"taking the build lock of {alias}") from exc
            try:
                held = self.client.get(index=LOCKS_INDEX, id=alias)
            except self.errors.not_found:
                continue  # released between our create and our read: try the create again
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, f"reading the build lock of {alias}") from exc
            source, seen = held["_source"], (held["_seq_no"], held["_primary_term"])
            holder = str(source.get("owner", "another builder"))
            if not _holder_gone(source):
                if watched is None:
                    watched, deadline = seen, time.monotonic() + self.stale_s
                    logger.warning("index %s is locked by %s; checking for up to %.0f s whether that builder is "
                                   "alive", alias, holder, self.stale_s)
                if seen != watched:
                    raise self._conflict(alias, holder)
                if time.monotonic() < deadline:
                    time.sleep(min(1.0, self.heartbeat_s / 4))
                    continue
            logger.warning("taking over the build lock of %s from %s: that builder is gone", alias, holder)
            try:
                done = self.client.index(index=LOCKS_INDEX, id=alias, body=self._body(token), refresh=True,
                                         if_seq_no=seen[0], if_primary_term=seen[1])
            except self.errors.conflict:
                raise self._conflict(alias, "another builder that took it over at the same moment") from None
            return done["_seq_no"], done["_primary_term"]

    def _heartbeat(self, alias: str, token: str, version: list[tuple[int, int]], lost: threading.Event,
                   stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                done = self.client.index(index=LOCKS_INDEX, id=alias, body=self._body(token),
                                         if_seq_no=version[0][0], if_primary_term=version[0][1])
                version[0] = (done["_seq_no"], done["_primary_term"])
            except self.errors.conflict:
                logger.error("the build lock of %s was taken over by another builder", alias)
                lost.set()
                return
            except Exception as exc:  # noqa: BLE001 - the build itself reports a dead cluster
                logger.debug("build lock heartbeat of %s failed: %s", alias, exc)

    def _release(self, alias: str, version: tuple[int, int], lost: threading.Event) -> None:
        if lost.is_set():
            return
        try:
            self.client.delete(index=LOCKS_INDEX, id=alias, refresh=True, if_seq_no=version[0],
                               if_primary_term=version[1])
        except (self.errors.not_found, self.errors.conflict):
            pass  # no longer ours: never delete another builder's lock
        except Exception as exc:  # noqa: BLE001 - a stale lock is taken over later
            logger.warning("could not release the build lock of %s (%s: %s); the next build takes it over after "
                           "%.0f s", alias, type(exc).__name__, str(exc).splitlines()[0][:200], self.stale_s)


def _holder_gone(holder: dict[str, Any]) -> bool:
    """Whether a lock's holder is known dead without waiting: only this very process, when it does not hold that
    lock now (an earlier build here failed and could not release it). Any other holder is watched instead:
    host names and pids repeat across containers, so "that pid is not running here" proves nothing."""
    return holder.get("process") == _PROCESS and holder.get("token") not in _HELD_TOKENS
