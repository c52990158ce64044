"""Held-out scoring during training: encode with the student, exact cosine search, nDCG@10 with ranx."""
from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch

from ceindex.models.runtime import length_sorted_batches


def encode(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Unit vectors from a SentenceTransformer (``model``) in eval mode, batched by length."""
    lengths = [len(t) for t in texts]
    out = np.zeros((len(texts), 0), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            chunks: dict[int, np.ndarray] = {}
            for batch in length_sorted_batches(lengths, batch_size):
                features = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                     max_length=max_length, return_tensors="pt")
                vectors = model(dict(features))["sentence_embedding"].float().cpu().numpy()
                for row, i in enumerate(batch):
                    chunks[i] = vectors[row]
            if chunks:
                out = np.stack([chunks[i] for i in range(len(texts))])
    finally:
        model.train(was_training)
    return out


def eval_doc_ids(doc_ids: Sequence[str], must_have: set[str], size: int, seed: int) -> list[str]:
    """The documents searched for held-out scoring: all relevant ones plus a seeded sample (0 = all)."""
    if size <= 0 or size >= len(doc_ids):
        return list(doc_ids)
    rest = [d for d in doc_ids if d not in must_have]
    sample = random.Random(seed).sample(rest, max(0, min(len(rest), size - len(must_have))))
    chosen = must_have | set(sample)
    return [d for d in doc_ids if d in chosen]


def held_out_metrics(
    model: Any,
    tokenizer: Any,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    docs: dict[str, str],
    doc_ids: Sequence[str],
    *,
    max_length: int,
    query_max_length: int,
) -> dict[str, float]:
    from ceindex.layers import evaluate_run, exact_search

    qids = list(qrels)
    doc_vecs = encode(model, tokenizer, [docs[d] for d in doc_ids], max_length)
    query_vecs = encode(model, tokenizer, [queries[q] for q in qids], query_max_length)
    return evaluate_run(qrels, exact_search(query_vecs, doc_vecs, qids, list(doc_ids), k=100))
