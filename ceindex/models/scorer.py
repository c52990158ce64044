"""The full cross-encoder as a scorer: one relevance logit per (query, document) pair.

Model core: the search pipeline re-ranks with it, evaluation re-ranks candidate runs with it and distillation
uses it as the teacher.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ceindex.models.assemble import InputAssembler
from ceindex.models.runners import RuntimeSpec, open_runner, torch_placement
from ceindex.models.runtime import (
    SerialTokenizer,
    length_sorted_batches,
    load_pretrained,
    local_model_dir,
    pair_max_length,
    prepare_model,
)

logger = logging.getLogger(__name__)


class CrossEncoderReranker:
    """Scores pairs with ``AutoModelForSequenceClassification`` (higher = more relevant)."""

    def __init__(
        self, model: str, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32",
        device: str = "auto", runtime: str = "torch", export_root: Path | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_ref = model
        self.batch_size = batch_size
        torch_dtype, self.device = torch_placement(runtime, dtype, device)
        self.runtime = runtime
        self.tokenizer = load_pretrained(model, "ce-layer", AutoTokenizer.from_pretrained, "cross-encoder tokenizer")
        loaded = load_pretrained(
            model, "ce-layer", AutoModelForSequenceClassification.from_pretrained, "cross-encoder"
        )
        self.model = prepare_model(loaded, torch_dtype, self.device)
        # None = the length the CE was trained at (its files say), capped by what the positions allow
        self.max_length, self.max_length_source = pair_max_length(max_length, self.model, self.tokenizer)
        logger.info("re-ranker %s: pairs cut at %d tokens (%s)", model, self.max_length, self.max_length_source)
        # a query's text is shared by all its pairs and a document's by every query that retrieved it: tokenise
        # each distinct text once and assemble the pairs (identical to the tokenizer's own pair encoding)
        self._assembler = InputAssembler.for_tokenizer(self.tokenizer, pair=True, warn=True)
        self.fallback_batches = 0  # batches whose pairs the tokenizer encoded (no assembler): the slower path
        self._fallback_lock = threading.Lock()
        self._input_names = set(self.tokenizer.model_input_names)
        # torch: None (the module runs); onnx / openvino: the cached export's session, shared by all threads
        folder = local_model_dir(model) if runtime != "torch" else None
        self._runner = open_runner(self.model, RuntimeSpec(runtime, dtype, folder, export_root, "logits"),
                                   sorted(self._input_names), lambda inputs: [self.model(**inputs).logits])
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
                    with self._fallback_lock:
                        self.fallback_batches += 1
                logits = self.model(**encoded).logits if self._runner is None else self._runner(encoded)[0]
                # one logit: relevance; two (not relevant, relevant): their difference ranks like the softmax
                column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
                out[batch] = column.float().cpu().numpy()
        return out
