"""Queries and relevance judgements from a BEIR folder or from TREC topic and qrels files."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ceindex.data.beir import read_qrels, read_qrels_file, read_queries
from ceindex.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class Topics:
    queries: dict[str, str]  # only judged queries
    qrels: dict[str, dict[str, int]]
    unjudged: list[str]  # query ids with no judgement, left out
    queries_sha256: str
    qrels_sha256: str
    source: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_trec_topics(path: Path) -> dict[str, str]:
    """``qid<TAB>text`` per line (the MS MARCO / TREC DL topics format)."""
    queries: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        qid, sep, text = line.partition("\t")
        if not sep or not text.strip():
            raise InputError(f"{path}: line {number}: expected 'query-id<TAB>text'")
        queries[qid.strip()] = text.strip()
    return queries


def load_topics(
    data_dir: str | Path | None = None,
    split: str = "test",
    *,
    queries_file: str | Path | None = None,
    qrels_file: str | Path | None = None,
) -> Topics:
    """Judged queries of ``split`` in a BEIR folder, or of TREC ``queries_file`` + ``qrels_file``."""
    if data_dir is not None:
        folder = Path(data_dir)
        q_path, r_path = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
        queries, qrels = read_queries(folder), read_qrels(folder, split)
    elif queries_file is not None and qrels_file is not None:
        q_path, r_path = Path(queries_file), Path(qrels_file)
        for path in (q_path, r_path):
            if not path.is_file():
                raise InputError(f"{path} does not exist")
        queries = read_trec_topics(q_path) if q_path.suffix != ".jsonl" else read_queries_file(q_path)
        qrels = read_qrels_file(r_path)
    else:
        raise InputError("give --data DIR (BEIR folder) or both --queries FILE and --qrels FILE")
    judged = {qid: text for qid, text in queries.items() if qrels.get(qid)}
    missing_text = sorted(set(qrels) - set(queries))
    if missing_text:
        raise InputError(f"{r_path}: {len(missing_text)} judged queries have no text in {q_path} (e.g. {missing_text[0]})")
    unjudged = sorted(set(queries) - set(judged))
    if not judged:
        raise InputError(f"no query in {q_path} has judgements in {r_path}")
    logger.info("%d judged queries; %d queries without judgements left out", len(judged), len(unjudged))
    return Topics(judged, {q: qrels[q] for q in judged}, unjudged, _sha256(q_path), _sha256(r_path), str(q_path.parent))


def read_queries_file(path: Path) -> dict[str, str]:
    from ceindex.data.beir import read_queries as _read

    if path.name != "queries.jsonl":
        raise InputError(f"{path}: a JSONL queries file must be named queries.jsonl (BEIR layout)")
    return _read(path.parent)
