"""Re-ranking with the full cross-encoder: one relevance logit per (query, document) pair."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from ceindex.encoders._assemble import InputAssembler
from ceindex.encoders._runtime import (
    SerialTokenizer,
    length_sorted_batches,
    load_pretrained,
    prepare_model,
    resolve_device,
)

logger = logging.getLogger(__name__)


class CrossEncoderReranker:
    """Scores pairs with ``AutoModelForSequenceClassification`` (higher = more relevant)."""

    def __init__(
        self, model: str, *, batch_size: int = 32, max_length: int = 256, dtype: str = "float32", device: str = "auto"
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_ref = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = resolve_device(device)
        self.tokenizer = load_pretrained(model, "ce-layer", AutoTokenizer.from_pretrained, "cross-encoder tokenizer")
        loaded = load_pretrained(
            model, "ce-layer", AutoModelForSequenceClassification.from_pretrained, "cross-encoder"
        )
        self.model = prepare_model(loaded, dtype, self.device)
        # a query's text is shared by all its pairs and a document's by every query that retrieved it: tokenise
        # each distinct text once and assemble the pairs (identical to the tokenizer's own pair encoding)
        self._assembler = InputAssembler.for_tokenizer(self.tokenizer, pair=True)
        self._input_names = set(self.tokenizer.model_input_names)
        self._tokenize = SerialTokenizer(self.tokenizer)  # score() may run in several threads at once

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Relevance scores in input order; pairs are batched by length for speed."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        ids: dict[str, list[int]] = {}
        if self._assembler is not None:
            distinct = list(dict.fromkeys(text for pair in pairs for text in pair))
            ids = dict(zip(distinct, self._tokenize(distinct, add_special_tokens=False, verbose=False)["input_ids"]))
            lengths = [len(ids[q]) + len(ids[d]) for q, d in pairs]
        else:
            lengths = [len(q) + len(d) for q, d in pairs]
        out = np.zeros(len(pairs), dtype=np.float32)
        with torch.inference_mode():
            for batch in length_sorted_batches(lengths, self.batch_size):
                if self._assembler is not None:
                    assembled = self._assembler([ids[pairs[i][0]] for i in batch], self.max_length,
                                                second=[ids[pairs[i][1]] for i in batch])
                    encoded = {k: v.to(self.device) for k, v in assembled.items() if k in self._input_names}
                else:
                    encoded = self._tokenize(
                        [pairs[i][0] for i in batch],
                        [pairs[i][1] for i in batch],
                        padding=True,
                        truncation="longest_first",
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(self.device)
                logits = self.model(**encoded).logits
                # one logit: relevance; two (not relevant, relevant): their difference ranks like the softmax
                column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
                out[batch] = column.float().cpu().numpy()
        return out


def rerank_candidates(
    reranker: CrossEncoderReranker,
    queries: Sequence[str],
    candidates: Sequence[Sequence[str]],
    texts: Mapping[str, str],
    top: int,
) -> list[dict[str, float]]:
    """Re-rank scores of the first ``top`` candidate ids of each query (ids without text are skipped).

    All queries' pairs go through the model together, so batches stay full.
    """
    pairs: list[tuple[str, str]] = []
    owners: list[tuple[int, str]] = []
    for qi, (query, ids) in enumerate(zip(queries, candidates)):
        for doc_id in list(ids)[:top]:
            if doc_id in texts:
                pairs.append((query, texts[doc_id]))
                owners.append((qi, doc_id))
    scores = reranker.score(pairs)
    out: list[dict[str, float]] = [{} for _ in queries]
    for (qi, doc_id), score in zip(owners, scores.tolist()):
        out[qi][doc_id] = float(score)
    return out


def reranked_order(candidate_ids: Sequence[str], scores: Mapping[str, float]) -> list[str]:
    """Re-ranked candidates first (by re-rank score, ties by candidate order), then the rest in candidate order."""
    position = {doc_id: i for i, doc_id in enumerate(candidate_ids)}
    head = sorted(scores, key=lambda d: (-scores[d], position.get(d, len(position))))
    return head + [d for d in candidate_ids if d not in scores]
