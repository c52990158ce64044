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
    """What one source contributes (ids not yet prefixed)."""

    queries: dict[str, str]
    docs: dict[str, str]
    relevant: dict[str, set[str]]
    triples: list[tuple[str, str, str]]
    held_out: list[str]
    pseudo: bool = False
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingData:
    doc_ids: list[str]
    docs: dict[str, str]  # doc id -> text
    queries: dict[str, str]  # every query (training and held out)
    relevant: dict[str, set[str]]  # query id -> relevant doc ids
    triples: list[tuple[str, str, str]]  # (query id, positive id, negative id) of the training queries
    held_out: list[str]  # held-out query ids
    pseudo_queries: set[str]  # query ids whose positive is a pseudo label (label-free sources)
    sources: list[dict[str, Any]]  # one record per source: kind, path, counts, rejects
    fingerprint: str  # sha256 over the sources' inputs

    @property
    def held_out_qrels(self) -> dict[str, dict[str, int]]:
        return {q: {d: 1 for d in self.relevant[q]} for q in self.held_out}

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
    parts = [_load(spec, held_out, seed, negatives_depth) for spec in specs]
    return _merge(parts, specs)


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
def _load(spec: SourceSpec, held_out: float, seed: int, depth: int) -> Part:
    loader = {"qrels": _qrels_part, "triples": _triples_part, "corpus": _corpus_part}.get(spec.kind)
    if loader is None:
        raise InputError(f"unknown training source kind {spec.kind!r}; use qrels, triples or corpus")
    part = loader(spec, held_out, seed, depth)
    if not part.triples:
        raise InputError(f"{spec.describe()}: no training triple could be formed (see the log for why)")
    part.record = {"kind": spec.kind, "path": str(Path(spec.path).expanduser().resolve()), **part.record,
                   "train_queries": len({q for q, _, _ in part.triples}), "triples": len(part.triples),
                   "held_out_queries": len(part.held_out)}
    log.info("%s: %d triples of %d training queries, %d held out", spec.describe(), len(part.triples),
             part.record["train_queries"], len(part.held_out))
    return part


def _qrels_part(spec: SourceSpec, held_out: float, seed: int, depth: int) -> Part:
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise InputError(f"--data {spec.path!r} is not a folder; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    qrels = read_qrels(folder, spec.split)
    queries = read_queries(folder)
    docs = {d["_id"]: doc_text(d) for d in read_corpus(folder)}
    relevant = _relevant_pairs(qrels, queries, docs, spec.split)
    train, held = _split_queries(sorted(relevant), held_out, seed, spec.describe())
    pairs = [(q, d) for q in train for d in sorted(relevant[q])]
    triples = mine_hard_negatives(pairs, list(docs), docs, queries, relevant, depth=depth, seed=seed)
    digest = hashlib.sha256((folder / "qrels" / f"{spec.split}.tsv").read_bytes()).hexdigest()
    return Part({q: queries[q] for q in relevant}, docs, relevant, triples, held,
                record={"split": spec.split, "qrels_sha256": digest, "train_pairs": len(pairs),
                        "negatives": f"one per pair, drawn from the BM25 top {depth} minus the relevant documents"})


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


def _triples_part(spec: SourceSpec, held_out: float, seed: int, depth: int) -> Part:
    rows, rejects, dropped = _read_rows(spec)
    if not rows:
        raise InputError(f"{spec.path}: no usable triple ({len(rejects)} rejected, {dropped} dropped by source)")
    queries, docs, relevant, negatives = _index_rows(rows)
    train, held = _split_queries(sorted(relevant), held_out, seed, spec.describe())
    triples = _given_triples(train, relevant, negatives)
    unmatched = [(q, p) for q in train for p in sorted(relevant[q]) if not negatives.get(q)]
    if unmatched:
        triples += mine_hard_negatives(unmatched, list(docs), docs, queries, relevant, depth=depth, seed=seed)
    if spec.limit and len(triples) > spec.limit:
        triples = sorted(random.Random(seed).sample(triples, spec.limit))
    record = {"rows": len(rows), "rejected": len(rejects), "dropped_by_source": dropped,
              "dropped_sources": list(spec.drop), "sha256": _file_sha256(Path(spec.path)),
              "rejects": [r.to_dict() for r in rejects[:MAX_REJECTS_SHOWN]],
              "negatives": "as given in the file (BM25 over the file's passages where a row has none)"}
    return Part(queries, docs, relevant, triples, held, record=record)


def _read_rows(spec: SourceSpec) -> tuple[list[Triple], list[Rejected], int]:
    rows: list[Triple] = []
    rejects: list[Rejected] = []
    dropped = 0
    for row in read_triples(Path(spec.path).expanduser()):
        if isinstance(row, Rejected):
            log.warning("%s: line %d: %s; row skipped", row.source, row.line, row.reason)
            rejects.append(row)
        elif spec.drop and row.source in spec.drop:
            dropped += 1
        else:
            rows.append(row)
    if spec.drop and not dropped:
        log.warning("%s: no row came from the dropped source(s) %s (is the .source file beside it?)",
                    spec.path, ", ".join(spec.drop))
    return rows, rejects, dropped


def _index_rows(rows: Iterable[Triple]) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]], dict[str, list[tuple[str, str]]]]:
    """Ids by text: one id per distinct query and per distinct passage."""
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    negatives: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        qid, pid = _text_id("q", row.query), _text_id("d", row.positive)
        queries[qid], docs[pid] = row.query, row.positive
        relevant.setdefault(qid, set()).add(pid)
        for negative in row.negatives:
            nid = _text_id("d", negative)
            docs[nid] = negative
            negatives.setdefault(qid, []).append((pid, nid))
    return queries, docs, relevant, negatives


def _given_triples(train: list[str], relevant: dict[str, set[str]],
                   negatives: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str, str]]:
    """One triple per given (positive, negative); a negative that is another row's positive for the same query
    is a contradiction in the file and is skipped."""
    out: list[tuple[str, str, str]] = []
    for qid in train:
        for pid, nid in negatives.get(qid, []):
            if nid not in relevant[qid]:
                out.append((qid, pid, nid))
    return sorted(set(out))


def _corpus_part(spec: SourceSpec, held_out: float, seed: int, depth: int) -> Part:
    documents = _read_corpus_documents(spec.path)
    docs = {d.id: d.body for d in documents}
    made = pseudo_queries(documents, spec.limit, seed)
    if not made:
        raise InputError(f"{spec.path}: no pseudo-query could be made (documents need a title or 2+ sentences)")
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for pq in made:
        docs[pq.positive_id] = pq.positive
        queries[pq.query_id] = pq.query
        relevant[pq.query_id] = {pq.positive_id, pq.doc_id}
    train, held = _split_queries(sorted(queries), held_out, seed, spec.describe())
    triples = _pseudo_triples(train, made, documents, depth, seed)
    kinds = {k: sum(1 for pq in made if pq.kind == k) for k in ("title", "ict")}
    record = {"documents": len(documents), "pseudo_queries": len(made), "by_kind": kinds,
              "negatives": f"BM25 top {depth} of the corpus minus the query's own document"}
    return Part(queries, docs, relevant, triples, held, pseudo=True, record=record)


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


def _pseudo_triples(train: list[str], made: list[PseudoQuery], documents: Sequence[Document], depth: int,
                    seed: int) -> list[tuple[str, str, str]]:
    """(pseudo-query, its positive, a BM25 hard negative from the corpus that is not its own document)."""
    by_id = {pq.query_id: pq for pq in made}
    wanted = {q: by_id[q].query for q in train}
    ids = [d.id for d in documents]
    found = bm25_candidates(ids, [d.body for d in documents], wanted, depth + 1)
    rng = random.Random(seed)
    triples = []
    for qid in train:
        pool = [d for d in found[qid] if d != by_id[qid].doc_id][:depth]
        if pool:
            triples.append((qid, by_id[qid].positive_id, rng.choice(pool)))
    return triples


# --------------------------------------------------------------------------- merging
def _split_queries(qids: list[str], held_out: float, seed: int, what: str) -> tuple[list[str], list[str]]:
    order = list(qids)
    random.Random(seed).shuffle(order)
    n_held = int(round(len(order) * held_out))
    if held_out > 0 and len(order) - n_held < 1:
        raise InputError(f"{what}: only {len(order)} usable queries: too few to hold {held_out:.0%} out")
    return sorted(order[n_held:]), sorted(order[:n_held])


def _merge(parts: list[Part], specs: Sequence[SourceSpec]) -> TrainingData:
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    triples: list[tuple[str, str, str]] = []
    held: list[str] = []
    pseudo: set[str] = set()
    for i, part in enumerate(parts):
        p = f"s{i}/"
        docs.update({p + d: t for d, t in part.docs.items()})
        queries.update({p + q: t for q, t in part.queries.items()})
        relevant.update({p + q: {p + d for d in ds} for q, ds in part.relevant.items()})
        triples += [(p + q, p + pos, p + neg) for q, pos, neg in part.triples]
        held += [p + q for q in part.held_out]
        if part.pseudo:
            pseudo |= {p + q for q in part.queries}
    digest = hashlib.sha256(repr([(s, part.record.get("sha256"), part.record.get("qrels_sha256"))
                                  for s, part in zip(specs, parts)]).encode("utf-8")).hexdigest()
    return TrainingData(doc_ids=list(docs), docs=docs, queries=queries, relevant=relevant, triples=triples,
                        held_out=sorted(held), pseudo_queries=pseudo, sources=[p.record for p in parts],
                        fingerprint=digest)


def _text_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path.expanduser(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
