"""Batches for in-batch negatives without false negatives.

With ``MultipleNegativesRankingLoss`` every other document in a batch is a negative for each query, so
a batch must not hold the same query twice, the same document twice, or a document that is relevant
to another query of the batch. Order is seeded per epoch, so a resumed run replays the same batches.
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence


def plan_batches(
    triples: Sequence[tuple[str, str, str]],
    relevant: Mapping[str, set[str]],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """Indices into ``triples``, grouped greedily into conflict-free batches (the last may be smaller)."""
    order = list(range(len(triples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    batches: list[list[int]] = []
    pending = order
    while pending:
        batch: list[int] = []
        queries: set[str] = set()
        docs: set[str] = set()
        blocked: set[str] = set()  # relevant documents of the batch's queries
        deferred: list[int] = []
        for index in pending:
            qid, pos, neg = triples[index]
            mine = relevant.get(qid, {pos})
            clash = (
                len(batch) >= batch_size
                or qid in queries
                or pos in docs or neg in docs
                or pos in blocked or neg in blocked
                or bool(mine & docs)
            )
            if clash:
                deferred.append(index)
                continue
            batch.append(index)
            queries.add(qid)
            docs.update((pos, neg))
            blocked |= mine
        batches.append(batch)
        pending = deferred
    return batches
