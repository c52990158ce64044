"""Distil a cross-encoder into a shallow dual encoder (arXiv 2502.03552, "DE-2 CE").

The student copies the cross-encoder's embeddings and first layer(s) (``init``), is trained on a BEIR
split's (query, relevant document, BM25 hard negative) triples (``mining``, ``batches``) with in-batch
negatives plus, optionally, the cross-encoder's margins as teacher (``teacher``, ``train``), and is saved
as a sentence-transformers folder that ``ceindex build --encoder de:DIR`` uses unchanged.
"""
from __future__ import annotations

from ceindex.distill.config import StudentConfig, TrainConfig

__all__ = ["StudentConfig", "TrainConfig", "build_student", "distill", "save_student"]


def __getattr__(name: str):  # heavy imports (torch, sentence-transformers) only when used
    if name in ("build_student", "save_student"):
        from ceindex.distill import init

        return getattr(init, name)
    if name == "distill":
        from ceindex.distill.train import distill

        return distill
    raise AttributeError(name)
