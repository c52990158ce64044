"""``ceindex build``: stream a corpus through an encoder into a backend, resumably.

The corpus is read once, in order. Every ``encode_batch_docs`` records form one batch: its good documents are
embedded while the previous batch is still being written, and once a batch is written the position reached in
the corpus is committed with the backend. A rerun of the same command finds the unfinished build and skips the
committed records (still validating them, so the summary and the rejects file cover the whole corpus).

The whole build holds the index's build lock. The alias moves to the new build only when it is good: the count
check holds, it has documents (unless ``allow_empty``) and no row was rejected (unless ``allow_rejects``).
A build held back stays sealed and unpublished; rerunning the same command (with the allow flag) publishes it
without encoding anything again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ceindex.backends.base import FAILED, Backend, BuildState, IndexSettings
from ceindex.backends.names import index_name, physical_name
from ceindex.config import BuildConfig
from ceindex.data.corpus import Document, Rejected, read_documents
from ceindex.filters import INFER_SAMPLE, FieldType, check_metadata, field_types_dict, infer_field_types, parse_field_types
from ceindex.models.base import Encoder, EncoderDescription
from ceindex.errors import EncoderMismatchError

logger = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    index: str
    physical: str
    read: int = 0
    indexed: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    rejects_file: str | None = None
    resumed_from: int = 0
    encoded: int = 0  # documents embedded by this run (a resume skips the committed ones)
    published: bool = False
    held_back: str | None = None  # why the alias was not moved to this build
    seconds: float = 0.0
    docs_per_s: float = 0.0
    read_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    pruned: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # the typed metadata fields of the index
    fields_inferred: bool = False  # typed from the first rows (not declared): pin them with --field / build.fields
    fields_skipped: dict[str, str] = field(default_factory=dict)  # sampled fields left untyped, and why
    # batches the encoder tokenised the slow way because its input assembler could not mirror the tokenizer
    # (None: the encoder does not count them)
    assembler_fallback_batches: int | None = None
    slice: str | None = None  # "I/N" for one slice of a sliced build, "finalize" for its finalize, else None
    slices_pending: list[str] = field(default_factory=list)  # slices of the sliced build not yet complete

    @property
    def count_ok(self) -> bool:
        return self.indexed == self.read - self.rejected

    def to_dict(self) -> dict:
        return asdict(self) | {"count_ok": self.count_ok}


def corpus_fingerprint(path: Path, build: BuildConfig, fields: dict[str, str] | None = None) -> str:
    """Identifies "the same corpus read the same way" for resuming, without reading the file twice. The typed
    fields are part of it: a rerun with other field types starts a new build instead of mixing two typings."""
    stat = path.stat()
    key = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, build.id_field, build.text_field, build.title_field]
    if fields:
        key.append(fields)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


@dataclass
class FieldPlan:
    """The typed metadata fields of a build: declared, or inferred from the first rows."""

    types: dict[str, FieldType]
    inferred: bool = False
    skipped: dict[str, str] = field(default_factory=dict)


def plan_fields(corpus: Path, build: BuildConfig) -> FieldPlan:
    """``build.fields`` when declared; else (with ``build.infer_fields``) the types seen in the first rows."""
    declared = parse_field_types(build.fields)
    if declared or not build.infer_fields:
        return FieldPlan(declared)
    records = read_documents(corpus, id_field=build.id_field, text_field=build.text_field, title_field=build.title_field)
    sample = []
    for record in records:
        if isinstance(record, Document):
            sample.append(record.metadata)
            if len(sample) >= INFER_SAMPLE:
                break
    types, skipped = infer_field_types(sample)
    if types:
        logger.info("metadata fields inferred from the first %d rows: %s (pin them with --field NAME=TYPE)",
                    len(sample), " ".join(f"{n}={t}" for n, t in field_types_dict(types).items()))
    return FieldPlan(types, inferred=True, skipped=skipped)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def _batches(records: Iterator[Document | Rejected], size: int, timer: list[float],
             keep: Callable[[Document | Rejected], bool] | None = None,
             ) -> Iterator[tuple[list[tuple[int, Document | Rejected]], int]]:
    """Batches of ``size`` kept records, each as ``([(its corpus position, record), ...], corpus position at the
    batch's end)``; a record ``keep`` refuses is dropped as it is read (a slice's batch holds its own rows only,
    however many slices share the corpus), its position still counted. ``keep`` is called once per record."""
    batch: list[tuple[int, Document | Rejected]] = []
    position = yielded = 0
    while True:
        start = time.perf_counter()
        record = next(records, None)
        timer[0] += time.perf_counter() - start
        if record is None:
            break
        position += 1
        if keep is None or keep(record):
            batch.append((position, record))
            if len(batch) >= size:
                yield batch, position
                batch, yielded = [], position
    if position > yielded:  # the last kept rows, or only others' rows after them: their position is committed too
        yield batch, position


def build_index(
    backend: Backend,
    encoder: Encoder,
    corpus: Path,
    alias: str,
    build: BuildConfig,
    *,
    rejects_path: Path,
    prune: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Build ``alias`` from ``corpus``: lock, load (or resume), seal, publish only if good, prune on request."""
    started = time.perf_counter()
    index_name(alias)
    with backend.build_lock(alias):
        description = encoder.describe()
        _check_alias_encoder(backend, alias, description)
        settings = IndexSettings(build.knn_m, build.knn_ef_construction, build.shards, build.replicas)
        plan = plan_fields(corpus, build)
        fields = field_types_dict(plan.types)
        state = _open_build(backend, alias, description, corpus_fingerprint(corpus, build, fields), settings, fields)
        summary = BuildSummary(index=alias, physical=state.physical, resumed_from=state.committed, fields=fields,
                               fields_inferred=plan.inferred, fields_skipped=plan.skipped)
        fallback_before = getattr(encoder, "fallback_batches", None)
        rejects = _load(backend, encoder, corpus, build, state, summary, progress, plan.types)
        if fallback_before is not None:
            summary.assembler_fallback_batches = encoder.fallback_batches - fallback_before  # type: ignore[attr-defined]
        summary.indexed = backend.seal(state, settings)
        _record_rejects(rejects, state.refused_total - len(state.refused), rejects_path, summary)
        _publish_if_good(backend, state, summary, build)
        if prune and summary.published:
            summary.pruned = backend.prune(alias)
    summary.seconds = time.perf_counter() - started
    summary.docs_per_s = summary.encoded / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _check_alias_encoder(backend: Backend, alias: str, description: EncoderDescription) -> None:
    current = backend.current_encoder(alias)
    if current is not None and current.differences(description):
        diffs = "; ".join(f"{k}: index has {a!r}, requested {b!r}" for k, (a, b) in current.differences(description).items())
        raise EncoderMismatchError(
            f"index '{alias}' was built with a different encoder ({diffs}); nothing was written. "
            "Build under a new --index name, or use the encoder the index records."
        )


def _open_build(
    backend: Backend, alias: str, description: EncoderDescription, fingerprint: str, settings: IndexSettings,
    fields: dict[str, str],
) -> BuildState:
    state = backend.find_resumable(alias, description, fingerprint)
    if state is not None and state.fields != fields:  # the fingerprint covers them; a hand-edited index may not
        logger.warning("not resuming %s: it was built with other field types (%s, now %s)", state.physical,
                       state.fields, fields)
        state = None
    if state is None:
        state = BuildState(physical_name(alias), alias, description, fingerprint, fields=fields)
        backend.create(state, settings)
        logger.info("building %s into %s", alias, state.physical)
    else:
        logger.info("resuming %s (%s): %d corpus records already committed", state.physical, state.status, state.committed)
    return state


def _load(
    backend: Backend,
    encoder: Encoder,
    corpus: Path,
    build: BuildConfig,
    state: BuildState,
    summary: BuildSummary,
    progress: bool,
    types: dict[str, FieldType],
    *,
    keep: Callable[[Document | Rejected], bool] | None = None,
    commit: Callable[[BuildState], None] | None = None,
) -> list[Rejected]:
    """Read, validate, embed and write the corpus in committed batches (embedding overlaps the previous write).

    ``keep`` (a slice build): only the rows it keeps are validated, counted, written and fill a batch;
    ``state.committed`` is still the position in the whole corpus. ``commit`` records the progress (default ``backend.commit``)."""
    rejects: list[Rejected] = []
    first_line: dict[str, int] = {}
    read_timer = [0.0]
    kept = shown = 0
    commit = commit or backend.commit
    records = read_documents(corpus, id_field=build.id_field, text_field=build.text_field, title_field=build.title_field)
    bar = tqdm(desc=f"build {state.alias}", unit="doc", disable=not progress, initial=0)

    def write(docs: list[Document], vectors: np.ndarray, end: int) -> float:
        begin = time.perf_counter()
        state.record_refused(backend.write(state, docs, vectors) if docs else [])
        state.committed = end
        commit(state)  # the position and the refused rows become durable together
        return time.perf_counter() - begin

    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceindex-write") as writer:
        for batch, end in _batches(records, build.encode_batch_docs, read_timer, keep):
            good: list[Document] = []
            for position, record in batch:
                kept += 1
                if isinstance(record, Document) and types:
                    record = _typed(record, types, str(corpus))
                if isinstance(record, Document) and record.id in first_line:
                    record = Rejected(str(corpus), record.line, f"duplicate id (first seen on line {first_line[record.id]})", record.id)
                if isinstance(record, Rejected):
                    rejects.append(record)
                    continue
                first_line[record.id] = record.line
                if position > state.committed:
                    good.append(record)
            summary.read = kept
            bar.update(end - shown)
            shown = end
            if end <= state.committed:
                continue
            begin = time.perf_counter()
            vectors = encoder.encode([d.body for d in good]) if good else np.zeros((0, state.encoder.dims), np.float32)
            summary.encode_s += time.perf_counter() - begin
            summary.encoded += len(good)
            if pending is not None:
                summary.write_s += pending.result()
            pending = writer.submit(write, good, vectors, end)
            bar.set_postfix(rejected=len(rejects) + state.refused_total)
        if pending is not None:
            summary.write_s += pending.result()
    bar.close()
    summary.read_s = read_timer[0]
    return rejects + [Rejected(**row) for row in state.refused]


def _typed(doc: Document, types: dict[str, FieldType], source: str) -> Document | Rejected:
    """The document with its typed fields normalised, or a reject naming the field that does not fit its type."""
    metadata, problem = check_metadata(doc.metadata, types)
    if problem:
        return Rejected(source, doc.line, problem, doc.id)
    doc.metadata = metadata
    return doc


def _record_rejects(rejects: list[Rejected], untold: int, rejects_path: Path, summary: BuildSummary) -> None:
    """Count the rejects (``untold``: refused rows beyond those whose details were kept) and write the file; a
    rejects file left by an earlier run of this build is removed when nothing is rejected now."""
    summary.rejected = len(rejects) + untold
    for reject in rejects:
        kind = _reason_kind(reject.reason)
        summary.rejects_by_reason[kind] = summary.rejects_by_reason.get(kind, 0) + 1
    if untold:
        summary.rejects_by_reason["refused by the store (details not kept)"] = untold
    if not rejects:
        if _is_rejects_file(rejects_path):
            rejects_path.unlink()
    else:
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        with open(rejects_path, "w", encoding="utf-8") as handle:
            for reject in rejects:
                handle.write(json.dumps(reject.to_dict(), ensure_ascii=False) + "\n")
        summary.rejects_file = str(rejects_path)


def _is_rejects_file(path: Path) -> bool:
    """Whether ``path`` is a rejects file ceindex wrote (a regular file of reject rows); anything else the user
    pointed --rejects at is never deleted."""
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and set(row) == {"source", "line", "id", "reason"}


def _publish_if_good(backend: Backend, state: BuildState, summary: BuildSummary, build: BuildConfig) -> None:
    """Move the alias to the sealed build, or hold it back (a failed count check also marks it never to resume)."""
    summary.held_back = _publish_blocker(summary, build)
    if summary.held_back is None:
        backend.publish(state)
        summary.published = True
        return
    logger.error("not published: %s", summary.held_back)
    if not summary.count_ok:
        state.status = FAILED
        backend.commit(state)


def _publish_blocker(summary: BuildSummary, build: BuildConfig) -> str | None:
    """Why this build must not replace what the alias serves now, or None when it may."""
    keep = (f"index {summary.physical} is kept unpublished and '{summary.index}' still serves what it served before")
    if not summary.count_ok:
        return (f"count check failed: the index holds {summary.indexed} documents, expected read {summary.read} - "
                f"rejected {summary.rejected} = {summary.read - summary.rejected}; {keep}. Rerun the same command: it "
                "builds a new index (this one is marked failed and deleted by the next --prune)")
    if summary.indexed == 0 and not build.allow_empty:
        return (f"the build holds 0 documents (read {summary.read} rows, rejected {summary.rejected}); {keep}. "
                "Check --text-field/--id-field, or pass --allow-empty to publish an empty index")
    if summary.rejected and not build.allow_rejects:
        return (f"{summary.rejected} row(s) were rejected (see {summary.rejects_file}); {keep}. Fix them and rerun, "
                "or rerun the same command with --allow-rejects to publish this build (nothing is encoded again)")
    return None


