"""``ceindex build --slice I/N`` and ``ceindex build --finalize``: N builders fill one physical index.

**Which rows.** Slice I holds the rows whose document id hashes to I (``ceindex/data/slices.py``: stable on every
machine, independent of row order, duplicates of an id in one slice). Every slice reads the whole corpus (reading
is cheap next to embedding) and embeds and writes only its own rows.

**One index, agreed without a coordinator.** The first slice to start creates ``NAME-<timestamp>`` under the
alias's build lock (held for that step only) and records in it the slice count N, the encoder and a fingerprint
of the corpus *content* (the file's SHA-256 plus the id/text/title fields and field types; unlike a path or an
mtime it is the same on every machine that holds a copy of the file). Every later slice, on any machine, takes
the lock in turn and finds that unpublished build by the fingerprint. A slice whose encoder settings differ from
the build's (model, layer, pooling, max length, dtype, tokenizer: anything that changes a vector) is refused, and
so is one that says another N (slices of one build never mix vectors) or other index settings (shards, HNSW m and
ef_construction, recorded by the first slice; a build recorded without them is joined as before).

**Each slice resumes on its own.** A slice holds its own lock (``NAME.slice-I-of-N``) while it loads and records
its own progress (position in the corpus, rows read, rejected and refused, done or not) apart from the others
(``backend.commit_slice``). Rerunning a killed slice's command resumes it after its last committed batch.
Its batches hold ``encode_batch_docs`` of its own rows (the others' are dropped as they are read). ``--prune``
keeps a sliced build until it is finalized or failed; a slice whose build was deleted anyway stops at its next
write or commit (``sliced_build_gone``) and never re-creates it.

**One rule for publishing.** Only ``ceindex build --finalize`` (the slices' command, with ``--finalize`` in place of
``--slice``) seals the index, runs the count check (documents in the index == rows of all slices - rejected) and
moves the alias, exactly once; it refuses, naming them, while any slice is unfinished or was never started. A
slice never publishes, so two slices finishing together cannot race for the alias.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ceindex.backends.base import BUILDING, COMPLETE, FAILED, Backend, BuildLockBusy, BuildState, IndexSettings
from ceindex.backends.names import index_name, physical_name, slice_lock_name
from ceindex.config import BuildConfig
from ceindex.data.slices import SliceSpec
from ceindex.errors import BackendError, EncoderMismatchError
from ceindex.filters import field_types_dict
from ceindex.models.base import Encoder, EncoderDescription
from indexer.build import (
    BuildSummary,
    _check_alias_encoder,
    _load,
    _publish_if_good,
    _record_rejects,
    plan_fields,
)

logger = logging.getLogger(__name__)

OPEN_WAIT_S = 60.0  # how long a slice waits for another slice (or a finalize) that holds the alias lock briefly
T = TypeVar("T")


def content_fingerprint(path: Path, build: BuildConfig, fields: dict[str, str]) -> str:
    """The corpus as all slices must read it: its bytes and how its rows are read (same on every machine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    key = ["sliced", digest.hexdigest(), build.id_field, build.text_field, build.title_field, fields]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _waiting_for_lock(backend: Backend, name: str, step: Callable[[], T]) -> T:
    """``step()`` under the build lock ``name``, waiting up to OPEN_WAIT_S while another builder holds it (the
    slices take the alias lock in turn, each for a moment)."""
    deadline = time.monotonic() + OPEN_WAIT_S
    while True:
        try:
            with backend.build_lock(name):
                return step()
        except BuildLockBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _sliced_builds(backend: Backend, alias: str, fingerprint: str) -> Iterator[BuildState]:
    """Unpublished, not failed sliced builds of ``alias`` from this corpus, newest first."""
    published = backend.alias_target(alias)
    for physical, meta in sorted(backend.build_metas(alias).items(), reverse=True):
        if meta.get("alias") != alias or "encoder" not in meta or physical == published:
            continue
        state = BuildState.from_meta(physical, meta)
        if state.slices and state.corpus_fingerprint == fingerprint and state.status != FAILED:
            yield state


def _differences(built: EncoderDescription, mine: EncoderDescription) -> str:
    return "; ".join(f"{k}: the build has {a!r}, this slice {b!r}" for k, (a, b) in built.build_differences(mine).items())


def _open_sliced(backend: Backend, alias: str, spec: SliceSpec, description: EncoderDescription, fingerprint: str,
                 settings: IndexSettings, fields: dict[str, str]) -> BuildState:
    """The sliced build this slice joins (refused when its N or encoder differ), or a new one it creates."""
    _check_alias_encoder(backend, alias, description)
    state = next(_sliced_builds(backend, alias, fingerprint), None)
    if state is None:
        state = BuildState(physical_name(alias), alias, description, fingerprint, fields=fields, slices=spec.count,
                           index_settings=settings.sliced_record())
        backend.create(state, settings)
        logger.info("slice %s: created the sliced build %s of %s", spec, state.physical, alias)
        return state
    if state.slices != spec.count:
        raise BackendError(
            f"slice {spec} refused: the unfinished build {state.physical} of '{alias}' from this corpus is cut into "
            f"{state.slices} slices, not {spec.count}; run --slice I/{state.slices}, or delete {state.physical} to "
            "start over with another N")
    diffs = _differences(state.encoder, description)
    if diffs:
        raise EncoderMismatchError(
            f"slice {spec} refused: the build {state.physical} of '{alias}' that the other slices fill was started "
            f"with other encoder settings ({diffs}); one build never mixes vectors of two settings. Run this slice "
            f"with the build's settings, or delete {state.physical} to start over with these")
    if state.fields != fields:
        raise BackendError(f"slice {spec} refused: the build {state.physical} has the field types {state.fields}, "
                           f"this slice {fields}; give every slice the same --field flags")
    mine = settings.sliced_record()
    # a build recorded before the settings were kept (no index_settings) is joined as before
    differing = {k: (v, mine[k]) for k, v in state.index_settings.items() if k in mine and v != mine[k]}
    if differing:
        flags = "; ".join(f"--{k.replace('_', '-')}: the build has {a}, this slice {b}" for k, (a, b) in differing.items())
        raise BackendError(
            f"slice {spec} refused: the build {state.physical} of '{alias}' that the other slices fill was created "
            f"with other index settings ({flags}); one index has one set. Run this slice with the build's settings, "
            f"or delete {state.physical} to start over with these")
    logger.info("slice %s joins the sliced build %s of %s", spec, state.physical, alias)
    return state


def _slice_record(state: BuildState, spec: SliceSpec, summary: BuildSummary, corpus_rows: int,
                  rejects_by_reason: dict[str, int], done: bool) -> dict[str, Any]:
    """What a slice records about itself (``read``/``rejected`` are final only once ``status`` is complete)."""
    return {"slice": str(spec), "status": COMPLETE if done else BUILDING, "committed": state.committed,
            "refused": state.refused, "refused_total": state.refused_total, "read": summary.read,
            "rejected": summary.rejected, "rejects_by_reason": rejects_by_reason, "corpus_rows": corpus_rows,
            "rejects_file": summary.rejects_file, "host": socket.gethostname(), "encoder": state.encoder.to_dict()}


def build_slice(
    backend: Backend,
    encoder: Encoder,
    corpus: Path,
    alias: str,
    build: BuildConfig,
    spec: SliceSpec,
    *,
    rejects_path: Path,
    progress: bool = True,
) -> BuildSummary:
    """Embed and write slice ``spec`` of ``corpus`` into the sliced build of ``alias`` (joined or created); resume
    it when it was interrupted. Never publishes: see :func:`finalize_slices`."""
    started = time.perf_counter()
    index_name(alias)
    description = encoder.describe()
    settings = IndexSettings(build.knn_m, build.knn_ef_construction, build.shards, build.replicas)
    plan = plan_fields(corpus, build)
    fields = field_types_dict(plan.types)
    fingerprint = content_fingerprint(corpus, build, fields)
    state = _waiting_for_lock(backend, alias, lambda: _open_sliced(backend, alias, spec, description, fingerprint,
                                                                   settings, fields))
    summary = BuildSummary(index=alias, physical=state.physical, fields=fields, fields_inferred=plan.inferred,
                           fields_skipped=plan.skipped, slice=str(spec))
    with backend.build_lock(slice_lock_name(alias, spec.number, spec.count)):
        record = backend.read_slices(state).get(spec.number, {})
        mine = replace(state, committed=int(record.get("committed", 0)), refused=list(record.get("refused", [])),
                       refused_total=int(record.get("refused_total", 0)), status=BUILDING)
        summary.resumed_from = mine.committed
        if record.get("status") == COMPLETE:
            logger.info("slice %s of %s is already complete; nothing to do", spec, state.physical)
            summary.read, summary.rejected = int(record["read"]), int(record["rejected"])
            summary.rejects_by_reason = dict(record.get("rejects_by_reason") or {})
            summary.rejects_file = record.get("rejects_file")
        else:
            _load_slice(backend, encoder, corpus, build, spec, mine, summary, progress, plan.types, rejects_path)
        summary.slices_pending = _pending(backend.read_slices(state), state.slices)
    summary.seconds = time.perf_counter() - started
    summary.docs_per_s = summary.encoded / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _load_slice(backend: Backend, encoder: Encoder, corpus: Path, build: BuildConfig, spec: SliceSpec,
                state: BuildState, summary: BuildSummary, progress: bool, types: Any, rejects_path: Path) -> None:
    """Load the slice's rows (resuming after ``state.committed``), then record it complete with its counts."""
    total = [0]

    def commit(current: BuildState) -> None:
        backend.commit_slice(current, spec.number, _slice_record(current, spec, summary, 0, {}, done=False))

    def keep(record: Any) -> bool:
        total[0] += 1
        return spec.holds(record.id, record.line)

    # each batch holds encode_batch_docs rows of this slice (the others' rows are skipped as they are read, never
    # held), as an unsliced build's batches do, whatever N
    rejects = _load(backend, encoder, corpus, build, state, summary, progress, types, keep=keep, commit=commit)
    _record_rejects(rejects, state.refused_total - len(state.refused), rejects_path, summary)
    state.committed = total[0]
    backend.commit_slice(state, spec.number,
                         _slice_record(state, spec, summary, total[0], summary.rejects_by_reason, done=True))
    logger.info("slice %s of %s complete: %d rows, %d rejected", spec, state.physical, summary.read, summary.rejected)


def _pending(records: dict[int, dict[str, Any]], count: int) -> list[str]:
    """The slices of ``count`` not recorded complete, e.g. ``["2/3 (unfinished)", "3/3 (never started)"]``."""
    pending = []
    for number in range(1, count + 1):
        record = records.get(number)
        if record is None:
            pending.append(f"{number}/{count} (never started)")
        elif record.get("status") != COMPLETE:
            pending.append(f"{number}/{count} (unfinished: {record.get('committed', 0)} corpus rows committed)")
    return pending


def finalize_slices(
    backend: Backend,
    corpus: Path,
    alias: str,
    build: BuildConfig,
    *,
    prune: bool = False,
) -> BuildSummary:
    """Seal the sliced build of ``alias`` from ``corpus`` once all its slices are complete, run the count check and
    publish it when good (the same rules as an unsliced build); refused, naming them, while slices are pending."""
    started = time.perf_counter()
    index_name(alias)
    settings = IndexSettings(build.knn_m, build.knn_ef_construction, build.shards, build.replicas)
    plan = plan_fields(corpus, build)
    fields = field_types_dict(plan.types)
    fingerprint = content_fingerprint(corpus, build, fields)
    with backend.build_lock(alias):
        state = next(_sliced_builds(backend, alias, fingerprint), None)
        if state is None:
            raise BackendError(
                f"no unpublished sliced build of '{alias}' from this corpus to finalize; run the slices first "
                "(`ceindex build ... --slice I/N` for I = 1..N, same corpus file and flags)")
        _check_alias_encoder(backend, alias, state.encoder)
        records = backend.read_slices(state)
        pending = _pending(records, state.slices)
        if pending:
            raise BackendError(
                f"cannot finalize {state.physical}: slice(s) {', '.join(pending)} not done; run (or rerun, to resume) "
                f"those slices' commands, then --finalize again. Nothing was published.")
        summary = _summary_of_slices(alias, state, records, fields, plan.inferred, plan.skipped)
        summary.indexed = backend.seal(state, settings)
        _publish_if_good(backend, state, summary, build)
        if not summary.count_ok:
            summary.held_back = (f"{summary.held_back}. For a sliced build: rerun every slice's command (they start a "
                                 "new sliced build), then --finalize")
        if prune and summary.published:
            summary.pruned = backend.prune(alias)
    summary.seconds = time.perf_counter() - started
    return summary


def _summary_of_slices(alias: str, state: BuildState, records: dict[int, dict[str, Any]], fields: dict[str, str],
                       inferred: bool, skipped: dict[str, str]) -> BuildSummary:
    """The build's totals from its complete slices; every slice must have read the same number of corpus rows."""
    rows = {int(r["corpus_rows"]) for r in records.values()}
    if len(rows) != 1:
        raise BackendError(f"the slices of {state.physical} read different corpora ({sorted(rows)} rows); "
                           "every slice must read the same file")
    summary = BuildSummary(index=alias, physical=state.physical, fields=fields, fields_inferred=inferred,
                           fields_skipped=skipped, slice="finalize")
    summary.read = sum(int(r["read"]) for r in records.values())
    summary.rejected = sum(int(r["rejected"]) for r in records.values())
    for record in records.values():
        for kind, count in (record.get("rejects_by_reason") or {}).items():
            summary.rejects_by_reason[kind] = summary.rejects_by_reason.get(kind, 0) + int(count)
    files = [f"{r['rejects_file']} on {r.get('host')}" for _, r in sorted(records.items()) if r.get("rejects_file")]
    summary.rejects_file = "; ".join(files) or None
    corpus_rows = rows.pop()
    if summary.read != corpus_rows:
        raise BackendError(f"the slices of {state.physical} hold {summary.read} rows together, but the corpus has "
                           f"{corpus_rows}; the slice rule changed between runs. Delete the build and start over")
    state.committed = corpus_rows
    return summary
