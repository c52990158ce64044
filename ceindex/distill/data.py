"""Training data for distillation, from any mix of three kinds of source, into one set of triples.

- ``qrels``: a BEIR folder's (query, relevant document) pairs of one split, with a BM25 hard negative each;
- ``triples``: a ``query<TAB>positive[<TAB>negative]`` file (TSV or JSONL, ``.gz``; ``ceindex.data.triples``), its
  negatives as given (mined with BM25 over the file's passages where a row has none);
- ``corpus`` (label-free): pseudo-queries made from the documents alone — a document's title for its text, and a
  sentence for the rest of its document (inverse cloze) — with BM25 hard negatives from the same corpus. No human
  label is read; the teacher(s) supply the supervision.

Each source holds out a seeded slice of its QUERIES (not pairs, so no held-out query leaks into training) for
early stopping. Ids are prefixed with the source's position (``s0/``, ``s1/``...) so sources never collide.
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ceindex.data.beir import doc_text, read_corpus, read_qrels, read_queries
from ceindex.data.corpus import Document, Rejected, corpus_path, read_documents
from ceindex.data.triples import Triple, read_triples
from ceindex.distill.mining import bm25_candidates, mine_hard_negatives
from ceindex.errors import InputError

log = logging.getLogger(__name__)

NO_SPLIT = ("", "none")
MAX_REJECTS_SHOWN = 20


@dataclass(frozen=True)
class SourceSpec:
    """One training source: ``kind`` is ``qrels`` (``path`` a BEIR folder, ``split``), ``triples`` (a file, with
    ``drop`` naming sources to leave out) or ``corpus`` (a corpus file or BEIR folder, label-free)."""

    kind: str
    path: str
    split: str = "train"
    drop: tuple[str, ...] = ()
    limit: int = 0  # training triples (triples) or pseudo-queries (corpus) at most; 0 = all

    def describe(self) -> str:
        extra = {"qrels": f" split {self.split}", "triples": f" minus {','.join(self.drop)}" if self.drop else "",
                 "corpus": " (label-free)"}[self.kind]
        return f"{self.kind}:{self.path}{extra}"


@dataclass
class Part:
    """What one source contributes, in content ids (``q``/``d`` + sha1 of the text), so the same query or document
    text from two sources is one query or document. Triples cover all of the source's queries; the held-out split
    is made after merging, by ``group`` (a query, or for pseudo-queries their source document, so the title and
    the sentence of one document are never on both sides)."""

    queries: dict[str, str]
    docs: dict[str, str]
    relevant: dict[str, set[str]]  # every id a batch must not use as this query's negative (incl. near-duplicates)
    judged: dict[str, set[str]]  # the relevant corpus documents for held-out scoring
    triples: list[tuple[str, str, str]]
    group: dict[str, str]  # query id -> held-out group
    variants: set[str] = field(default_factory=set)  # passages cut from documents (not searched when scoring)
    pseudo: bool = False
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingData:
    doc_ids: list[str]  # the documents held-out queries are searched in (corpus documents, passages of files)
    docs: dict[str, str]  # doc id -> text (also the passages cut from documents for pseudo-queries)
    queries: dict[str, str]  # every query (training and held out)
    relevant: dict[str, set[str]]  # query id -> ids never used as its negative
    judged: dict[str, set[str]]  # query id -> relevant documents among doc_ids (held-out scoring)
    triples: list[tuple[str, str, str]]  # (query id, positive id, negative id) of the training queries
    held_out: list[str]  # held-out query ids
    pseudo_queries: set[str]  # query ids whose positive is a pseudo label (label-free sources)
    sources: list[dict[str, Any]]  # one record per source: kind, path, counts, rejects

    @property
    def held_out_qrels(self) -> dict[str, dict[str, int]]:
        return {q: {d: 1 for d in self.judged[q]} for q in self.held_out}

    @property
    def train_pairs(self) -> list[tuple[str, str]]:
        return sorted({(q, p) for q, p, _ in self.triples})


# --------------------------------------------------------------------------- public
def load_sources(
    specs: Sequence[SourceSpec], *, held_out: float, seed: int, negatives_depth: int = 10
) -> TrainingData:
    """Read every source, make its triples, hold out a slice of its queries, and merge them."""
    if not specs:
        raise InputError(
            "no training source: give --data DIR (BEIR qrels of --split), --triples FILE and/or --corpus PATH "
            "(label-free)"
        )
    parts = [_load(spec, seed, negatives_depth) for spec in specs]
    return _merge(parts, held_out, seed)


def load_training_data(data_dir: str | Path, split: str, held_out: float, seed: int) -> TrainingData:
    """A BEIR split's qrels as the only source (the original recipe)."""
    return load_sources([SourceSpec("qrels", str(data_dir), split)], held_out=held_out, seed=seed)


def specs_from(data_dir: str | None, split: str, triples: str | None, drop: str | None, corpus: str | None,
               max_triples: int, pseudo_queries: int) -> list[SourceSpec]:
    """The sources named by ``distill``'s flags: ``--data`` (with a split, or label-free when the split is none),
    ``--triples`` (comma-separated files) and ``--corpus``."""
    specs: list[SourceSpec] = []
    if data_dir:
        if split.strip().lower() in NO_SPLIT:
            specs.append(SourceSpec("corpus", data_dir, limit=pseudo_queries))
        else:
            specs.append(SourceSpec("qrels", data_dir, split))
    dropped = tuple(s.strip() for s in (drop or "").split(",") if s.strip())
    for path in (p.strip() for p in (triples or "").split(",")):
        if path:
            specs.append(SourceSpec("triples", path, drop=dropped, limit=max_triples))
    if corpus:
        specs.append(SourceSpec("corpus", corpus, limit=pseudo_queries))
    return specs


# --------------------------------------------------------------------------- per kind
def _load(spec: SourceSpec, seed: int, depth: int) -> Part:
    loader = {"qrels": _qrels_part, "triples": _triples_part, "corpus": _corpus_part}.get(spec.kind)
    if loader is None:
        raise InputError(f"unknown training source kind {spec.kind!r}; use qrels, triples or corpus")
    part = loader(spec, seed, depth)
    if not part.triples:
        raise InputError(f"{spec.describe()}: no training triple could be formed (see the log for why)")
    part.record = {"kind": spec.kind, "path": str(Path(spec.path).expanduser().resolve()), **part.record,
                   "queries": len(part.queries), "triples_before_held_out": len(part.triples)}
    log.info("%s: %d queries, %d triples", spec.describe(), len(part.queries), len(part.triples))
    return part


def _qrels_part(spec: SourceSpec, seed: int, depth: int) -> Part:
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise InputError(f"--data {spec.path!r} is not a folder; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    qrels = read_qrels(folder, spec.split)
    queries = read_queries(folder)
    docs = {d["_id"]: doc_text(d) for d in read_corpus(folder)}
    relevant = _relevant_pairs(qrels, queries, docs, spec.split)
    pairs = [(q, d) for q in sorted(relevant) for d in sorted(relevant[q])]
    mined = mine_hard_negatives(pairs, list(docs), docs, queries, relevant, depth=depth, seed=seed)
    qid, did = _ids(queries, "q"), _ids(docs, "d")
    relevant_c = {qid[q]: {did[d] for d in ds} for q, ds in relevant.items()}
    digest = hashlib.sha256((folder / "qrels" / f"{spec.split}.tsv").read_bytes()).hexdigest()
    return Part(queries={qid[q]: queries[q] for q in relevant}, docs={did[d]: t for d, t in docs.items()},
                relevant=relevant_c, judged={q: set(ds) for q, ds in relevant_c.items()},
                triples=[(qid[q], did[p], did[n]) for q, p, n in mined], group={qid[q]: qid[q] for q in relevant},
                record={"split": spec.split, "qrels_sha256": digest, "pairs": len(pairs),
                        "negatives": f"one per pair, drawn from the BM25 top {depth} minus the relevant documents"})


def _ids(texts: dict[str, str], prefix: str) -> dict[str, str]:
    return {key: _text_id(prefix, text) for key, text in texts.items()}


def _relevant_pairs(qrels: dict[str, dict[str, int]], queries: dict[str, str], docs: dict[str, str],
                    split: str) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    unknown = 0
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        positives = {d for d, rel in judged.items() if rel > 0 and d in docs and docs[d].strip()}
        unknown += sum(1 for d, rel in judged.items() if rel > 0 and d not in docs)
        if positives and queries[qid].strip():
            relevant[qid] = positives
    if unknown:
        log.warning("%d relevant documents of split %r are not in corpus.jsonl and are skipped", unknown, split)
    if not relevant:
        raise InputError(
            f"qrels/{split}.tsv has no (query, relevant document) pair whose query text and document are both "
            "present: nothing to train on; check the split name and the ids"
        )
    return relevant


def _triples_part(spec: SourceSpec, seed: int, depth: int) -> Part:
    rows, rejects, dropped = _read_rows(spec)
    if not rows:
        raise InputError(f"{spec.path}: no usable triple ({len(rejects)} rejected, {dropped} dropped by source)")
    queries, docs, relevant, given = _index_rows(rows)
    triples, unmatched = _given_triples(relevant, given)
    if unmatched:
        triples += mine_hard_negatives(sorted(unmatched), list(docs), docs, queries, relevant, depth=depth, seed=seed)
    if spec.limit and len(triples) > spec.limit:
        triples = sorted(random.Random(seed).sample(sorted(set(triples)), spec.limit))
    record = {"rows": len(rows), "rejected": len(rejects), "dropped_by_source": dropped,
              "dropped_sources": sorted(spec.drop), "sha256": _file_sha256(Path(spec.path)),
              "rows_negative_mined": len(unmatched),
              "rejects": [r.to_dict() for r in rejects[:MAX_REJECTS_SHOWN]],
              "negatives": "as given in the file (BM25 over the file's passages for a row without a usable one)"}
    return Part(queries, docs, relevant, {q: set(ds) for q, ds in relevant.items()}, sorted(set(triples)),
                group={q: q for q in queries}, record=record)


def _read_rows(spec: SourceSpec) -> tuple[list[Triple], list[Rejected], int]:
    rows: list[Triple] = []
    rejects: list[Rejected] = []
    dropped = 0
    seen: set[str | None] = set()
    for row in read_triples(Path(spec.path).expanduser()):
        if isinstance(row, Rejected):
            log.warning("%s: line %d: %s; row skipped", row.source, row.line, row.reason)
            rejects.append(row)
            continue
        seen.add(row.source)
        if spec.drop and row.source in spec.drop:
            dropped += 1
        else:
            rows.append(row)
    unknown = sorted(set(spec.drop) - seen)
    if unknown:
        known = ", ".join(sorted(str(s) for s in seen if s)) or "none (no NAME.source file beside it, no JSONL 'source')"
        raise InputError(f"{spec.path}: --drop-sources names {', '.join(unknown)}, which no row comes from; "
                         f"the sources in the file are: {known}")
    return rows, rejects, dropped


def _index_rows(rows: Iterable[Triple]) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]], list[tuple[str, str, list[str]]]]:
    """Content ids: one per distinct query and per distinct passage; per row (query, positive, negatives)."""
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    given: list[tuple[str, str, list[str]]] = []
    for row in rows:
        qid, pid = _text_id("q", row.query), _text_id("d", row.positive)
        queries[qid], docs[pid] = row.query, row.positive
        relevant.setdefault(qid, set()).add(pid)
        nids = [_text_id("d", n) for n in row.negatives]
        docs.update(zip(nids, row.negatives))
        given.append((qid, pid, nids))
    return queries, docs, relevant, given


def _given_triples(relevant: dict[str, set[str]], given: list[tuple[str, str, list[str]]]
                   ) -> tuple[list[tuple[str, str, str]], set[tuple[str, str]]]:
    """One triple per given (positive, negative) of a row; a row with no usable negative (none given, or only
    another row's positive for the same query) is returned as a pair to mine a negative for."""
    triples: list[tuple[str, str, str]] = []
    unmatched: set[tuple[str, str]] = set()
    for qid, pid, nids in given:
        usable = [(qid, pid, n) for n in nids if n not in relevant[qid]]
        triples += usable
        if not usable:
            unmatched.add((qid, pid))
    return triples, unmatched


def _corpus_part(spec: SourceSpec, seed: int, depth: int) -> Part:
    documents = _read_corpus_documents(spec.path)
    made = pseudo_queries(documents, spec.limit, seed)
    if not made:
        raise InputError(f"{spec.path}: no pseudo-query could be made (documents need a title or 2+ sentences)")
    did = {d.id: _text_id("d", d.body) for d in documents}
    docs = {did[d.id]: d.body for d in documents}
    variants_of: dict[str, set[str]] = {}
    for pq in made:
        variants_of.setdefault(pq.doc_id, {did[pq.doc_id]}).add(_text_id("d", pq.positive))
    queries, relevant, judged, group, variants = {}, {}, {}, {}, set()
    for pq in made:
        qid, pid = _text_id("q", pq.query), _text_id("d", pq.positive)
        docs[pid], queries[qid] = pq.positive, pq.query
        relevant.setdefault(qid, set()).update(variants_of[pq.doc_id])  # the document and every passage cut from it
        judged.setdefault(qid, set()).add(did[pq.doc_id])
        group.setdefault(qid, did[pq.doc_id])
        variants.add(pid)
    triples = [(_text_id("q", pq.query), _text_id("d", pq.positive), did[n])
               for pq, n in _pseudo_negatives(made, documents, depth, seed)]
    kinds = {k: sum(1 for pq in made if pq.kind == k) for k in ("title", "ict")}
    record = {"documents": len(documents), "pseudo_queries": len(made), "by_kind": kinds,
              "negatives": f"BM25 top {depth} of the corpus minus the query's own document"}
    return Part(queries, docs, relevant, judged, sorted(set(triples)), group, variants - set(did.values()),
                pseudo=True, record=record)


def _read_corpus_documents(path: str) -> list[Document]:
    target = Path(path).expanduser()
    file = corpus_path(target, None) if target.is_dir() else corpus_path(None, target)
    documents: list[Document] = []
    for row in read_documents(file):
        if isinstance(row, Rejected):
            log.warning("%s: line %d: %s; row skipped", row.source, row.line, row.reason)
        else:
            documents.append(row)
    if not documents:
        raise InputError(f"{file}: no document could be read")
    return documents


@dataclass(frozen=True)
class PseudoQuery:
    query_id: str
    query: str
    positive_id: str  # the text the query was cut from, minus the query (a new passage id)
    positive: str
    doc_id: str  # the corpus document it came from
    kind: str  # "title" or "ict"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def pseudo_queries(documents: Sequence[Document], limit: int, seed: int) -> list[PseudoQuery]:
    """Up to ``limit`` (0 = all) pseudo-queries, seeded: per document its title (positive: the text) and one
    inverse-cloze sentence (positive: the document without that sentence)."""
    rng = random.Random(seed)
    made: list[PseudoQuery] = []
    for doc in documents:
        text = doc.text.strip()
        if doc.title.strip() and len(text.split()) >= 8:
            made.append(PseudoQuery(f"{doc.id}#title", doc.title.strip(), f"{doc.id}#text", text, doc.id, "title"))
        sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
        choices = [i for i, s in enumerate(sentences) if 4 <= len(s.split()) <= 40]
        if len(sentences) >= 2 and choices:
            i = rng.choice(choices)
            rest = " ".join(s for j, s in enumerate(sentences) if j != i)
            positive = f"{doc.title.strip()} {rest}".strip()
            made.append(PseudoQuery(f"{doc.id}#ict", sentences[i], f"{doc.id}#ict", positive, doc.id, "ict"))
    rng.shuffle(made)
    return sorted(made[:limit] if limit else made, key=lambda p: p.query_id)


def _pseudo_negatives(made: list[PseudoQuery], documents: Sequence[Document], depth: int,
                      seed: int) -> list[tuple[PseudoQuery, str]]:
    """Per pseudo-query a BM25 hard negative from the corpus (a document id) that is not its own document."""
    wanted = {pq.query_id: pq.query for pq in made}
    ids = [d.id for d in documents]
    found = bm25_candidates(ids, [d.body for d in documents], wanted, depth + 1)
    rng = random.Random(seed)
    out = []
    for pq in made:
        pool = [d for d in found[pq.query_id] if d != pq.doc_id][:depth]
        if pool:
            out.append((pq, rng.choice(pool)))
    return out


# --------------------------------------------------------------------------- merging
def _merge(parts: list[Part], held_out: float, seed: int) -> TrainingData:
    """Union by content id, then hold out a seeded share of the query GROUPS across all sources: a query text
    held out is held out everywhere, and no triple of a held-out query is trained on."""
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    judged: dict[str, set[str]] = {}
    group: dict[str, str] = {}
    variants: set[str] = set()
    pseudo: set[str] = set()
    triples: set[tuple[str, str, str]] = set()
    for part in parts:
        docs.update(part.docs)
        queries.update(part.queries)
        for q, ds in part.relevant.items():
            relevant.setdefault(q, set()).update(ds)
        for q, ds in part.judged.items():
            judged.setdefault(q, set()).update(ds)
        for q, g in part.group.items():
            group.setdefault(q, g)
        variants |= part.variants
        if part.pseudo:
            pseudo |= set(part.queries)
        triples.update(part.triples)
    held = _held_out_queries(group, held_out, seed)
    kept = sorted((q, p, n) for q, p, n in triples if q not in held and n not in relevant[q])
    if not kept:
        raise InputError("every training query was held out: lower --held-out or add data")
    records = [_with_counts(part.record, part, held) for part in parts]
    return TrainingData(doc_ids=[d for d in docs if d not in variants], docs=docs, queries=queries,
                        relevant=relevant, judged=judged, triples=kept, held_out=sorted(held),
                        pseudo_queries=pseudo, sources=records)


def _held_out_queries(group: dict[str, str], held_out: float, seed: int) -> set[str]:
    groups = sorted(set(group.values()))
    random.Random(seed).shuffle(groups)
    n_held = int(round(len(groups) * held_out))
    if held_out > 0 and len(groups) - n_held < 1:
        raise InputError(f"only {len(groups)} usable queries (or documents, for pseudo-queries): too few to hold "
                         f"{held_out:.0%} out")
    chosen = set(groups[:n_held])
    return {q for q, g in group.items() if g in chosen}


def _with_counts(record: dict[str, Any], part: Part, held: set[str]) -> dict[str, Any]:
    train = [t for t in part.triples if t[0] not in held]
    return record | {"train_queries": len({q for q, _, _ in train}), "triples": len(train),
                     "held_out_queries": len(set(part.queries) & held)}


def _text_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path.expanduser(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
