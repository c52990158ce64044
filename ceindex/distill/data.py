"""Training data for distillation: (query, relevant document) pairs of a BEIR split, with a held-out
slice of its QUERIES (not pairs, so no held-out query leaks into training) for early stopping."""
from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ceindex.data.beir import doc_text, read_corpus, read_qrels, read_queries
from ceindex.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    doc_ids: list[str]
    docs: dict[str, str]  # doc id -> title + " " + text
    queries: dict[str, str]  # every query with qrels in the split
    relevant: dict[str, set[str]]  # query id -> relevant doc ids (relevance > 0)
    train_pairs: list[tuple[str, str]]  # (query id, relevant doc id) of the training queries
    held_out: list[str]  # held-out query ids
    qrels_sha256: str

    @property
    def held_out_qrels(self) -> dict[str, dict[str, int]]:
        return {q: {d: 1 for d in self.relevant[q]} for q in self.held_out}


def load_training_data(data_dir: str | Path, split: str, held_out: float, seed: int) -> TrainingData:
    """Read ``data_dir`` (BEIR) and split ``split``'s queries into training and held-out (seeded)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"--data {str(data_dir)!r} is not a folder; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    qrels = read_qrels(data_dir, split)
    queries = read_queries(data_dir)
    docs = {d["_id"]: doc_text(d) for d in read_corpus(data_dir)}
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
            f"{data_dir}/qrels/{split}.tsv has no (query, relevant document) pair whose query text and document "
            "are both present: nothing to train on; check the split name and the ids"
        )
    qids = sorted(relevant)
    rng = random.Random(seed)
    rng.shuffle(qids)
    n_held = int(round(len(qids) * held_out))
    if held_out > 0 and len(qids) - n_held < 1:
        raise InputError(f"split {split!r} has only {len(qids)} usable queries: too few to hold {held_out:.0%} out")
    held, train = sorted(qids[:n_held]), sorted(qids[n_held:])
    pairs = [(q, d) for q in train for d in sorted(relevant[q])]
    digest = hashlib.sha256((data_dir / "qrels" / f"{split}.tsv").read_bytes()).hexdigest()
    log.info("%s/%s: %d training queries (%d pairs), %d held out; %d documents",
             data_dir, split, len(train), len(pairs), len(held), len(docs))
    return TrainingData(
        doc_ids=list(docs), docs=docs, queries={q: queries[q] for q in relevant}, relevant=relevant,
        train_pairs=pairs, held_out=held, qrels_sha256=digest,
    )
