"""Model inputs assembled from token ids that were computed once per text.

The embedder tokenises every text once (no special tokens, no truncation) to sort by length. Asking the
tokenizer again for the batch, as ``tokenizer(t, t, truncation="longest_first")``, re-tokenises each text
twice more and dominated encode time at early layers (on a GPU the model waited for the tokenizer). This
module reuses the ids: it learns the tokenizer's special-token template from one probe, truncates exactly
as the Rust ``longest_first`` strategy does, and pads. Tests check the result equals the tokenizer's own
output token for token on several model families; anything it cannot mirror falls back to the tokenizer.
That fallback is slower, so it is never silent: a warning once per tokenizer class (``warn_fallback_once``),
and the encoders and the scorer count the batches that took it (their ``fallback_batches``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ceindex.errors import ConfigError

log = logging.getLogger(__name__)

_PROBE_A, _PROBE_B = "alpha beta", "gamma"

_warned_classes: set[str] = set()  # tokenizer classes whose fallback has been warned about in this process
_warned_lock = threading.Lock()


def warn_fallback_once(tokenizer: Any, reason: str) -> bool:
    """Log a warning that ``tokenizer`` cannot be mirrored and batches go through the tokenizer itself, once per
    tokenizer class and process (not per batch or per encoder). True when this call logged it."""
    cls = type(tokenizer)
    key = f"{cls.__module__}.{cls.__qualname__}"
    with _warned_lock:
        if key in _warned_classes:
            return False
        _warned_classes.add(key)
    log.warning("%s: model inputs are made by the tokenizer itself for every batch (slower path): the input "
                "assembler cannot mirror it (%s). The batches are counted as fallback_batches (in `ceindex build "
                "--json`: assembler_fallback_batches); this is said once per tokenizer class.", cls.__name__, reason)
    return True


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths the two sequences keep under ``longest_first`` truncation to ``budget`` content tokens
    (the rule of the ``tokenizers`` library: the shorter keeps what it can, the longer the rest; if both
    are long they split the budget, the second getting the odd token)."""
    if n1 + n2 <= budget:
        return n1, n2
    small, large = (n2, n1) if n1 > n2 else (n1, n2)
    large = small if small > budget else max(small, budget - small)
    if small + large > budget:
        small = budget // 2
        large = small + budget % 2
    return (large, small) if n1 > n2 else (small, large)


@dataclass(frozen=True)
class _Template:
    """Special tokens around one or two sequences, with their segment (token type) ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]  # between the two sequences (pair templates only)
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    type_a: int
    type_b: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _learn_template(tokenizer: Any, pair: bool) -> _Template | None:
    """Read the template off one encoded probe: its sequence ids say which positions are text, which special."""
    enc = tokenizer(_PROBE_A, _PROBE_B if pair else None, return_token_type_ids=True)
    ids = list(enc["input_ids"])
    types = list(enc.get("token_type_ids") or [0] * len(ids))
    seq = enc.sequence_ids()
    spans = []
    for wanted in (0, 1) if pair else (0,):
        where = [i for i, s in enumerate(seq) if s == wanted]
        if not where or where != list(range(where[0], where[-1] + 1)):
            return None  # a sequence missing or split by special tokens: not a simple template
        spans.append((where[0], where[-1] + 1))
    (a0, a1), (b0, b1) = spans[0], spans[1] if pair else (spans[0][1], spans[0][1])
    seg_a, seg_b = set(types[a0:a1]), set(types[b0:b1]) if pair else {0}
    if len(seg_a) != 1 or len(seg_b) != 1 or any(s is not None for s in seq[:a0] + seq[a1:b0] + seq[b1:]):
        return None
    return _Template(
        prefix=tuple(ids[:a0]), middle=tuple(ids[a1:b0]), suffix=tuple(ids[b1:]),
        prefix_types=tuple(types[:a0]), middle_types=tuple(types[a1:b0]), suffix_types=tuple(types[b1:]),
        type_a=seg_a.pop(), type_b=seg_b.pop(),
    )


def _mirrors(assembler: "InputAssembler", tokenizer: Any) -> bool:
    """Whether ``assembler`` reproduces ``tokenizer`` on a probe batch: unequal lengths, padding, and both
    truncation cases (one sequence longer than the budget, both long), at an odd and an even budget."""
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex".split()
    texts = [" ".join(words[: n % len(words) + 1] * (1 + n // 3)) for n in range(1, 12)]
    seconds = texts[::-1]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    second_ids = tokenizer(seconds, add_special_tokens=False)["input_ids"]
    for max_length in (assembler.n_special + 7, assembler.n_special + 24, 512):
        for partner, partner_ids in ((None, None), (seconds, second_ids)) if assembler.pair else ((None, None),):
            ours = assembler(ids, max_length, second=partner_ids)
            theirs = tokenizer(texts, partner if partner is not None else (texts if assembler.pair else None),
                               truncation="longest_first", max_length=max_length, padding=True,
                               return_special_tokens_mask=True, return_token_type_ids=True, return_tensors="pt")
            if any(not torch.equal(ours[k], theirs[k]) for k in ("input_ids", "attention_mask", "token_type_ids",
                                                                  "special_tokens_mask")):
                return False
    return True


class InputAssembler:
    """Builds ``input_ids``/``attention_mask``/``token_type_ids`` plus two pooling masks for a batch, each text
    given as its token ids (no special tokens): single texts, or pairs (a text with itself, or query + document)."""

    def __init__(self, template: _Template, *, pair: bool, pad_id: int, pad_type_id: int = 0) -> None:
        self.template, self.pair, self.pad_id, self.pad_type_id = template, pair, pad_id, pad_type_id

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, *, pair: bool, warn: bool = False) -> "InputAssembler | None":
        """An assembler mirroring ``tokenizer``, or None where it cannot be mirrored (then use the tokenizer).
        ``warn``: say so with ``warn_fallback_once`` (callers that will then tokenise every batch pass True)."""
        assembler, reason = cls._mirror(tokenizer, pair)
        if assembler is None and warn:
            warn_fallback_once(tokenizer, reason)
        return assembler

    @classmethod
    def _mirror(cls, tokenizer: Any, pair: bool) -> "tuple[InputAssembler | None, str]":
        """The assembler, or None and why not."""
        if not getattr(tokenizer, "is_fast", False):
            return None, "it is not a fast (Rust) tokenizer"
        sides = (getattr(tokenizer, "truncation_side", "right"), getattr(tokenizer, "padding_side", "right"))
        if sides != ("right", "right"):
            return None, f"it truncates on the {sides[0]} and pads on the {sides[1]}; the assembler does both on the right"
        if tokenizer.pad_token_id is None:
            return None, "it has no padding token"
        try:
            template = _learn_template(tokenizer, pair)
            if template is None or template.n_special != tokenizer.num_special_tokens_to_add(pair=pair):
                return None, "its special-token template is not one the assembler can express"
            assembler = cls(template, pair=pair, pad_id=int(tokenizer.pad_token_id),
                            pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0))
            if not _mirrors(assembler, tokenizer):
                return None, "a probe batch assembled from token ids differs from the tokenizer's own encoding"
            return assembler, ""
        except Exception as exc:  # noqa: BLE001 - any surprise means: use the tokenizer itself
            log.debug("cannot mirror the tokenizer %s: %s", type(tokenizer).__name__, exc)
            return None, f"probing it raised {type(exc).__name__}"

    @property
    def n_special(self) -> int:
        return self.template.n_special

    def __call__(
        self, token_ids: Sequence[Sequence[int]], max_length: int, second: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """``second``: the paired sequences (pair template only); None pairs each text with itself."""
        t = self.template
        if second is not None and not self.pair:
            raise ValueError("a single-text assembler cannot take second sequences")
        if max_length <= t.n_special:
            raise ConfigError(f"max_length {max_length} leaves no room for text next to {t.n_special} special tokens")
        budget = max_length - t.n_special
        rows: list[tuple[list[int], list[int], list[int], list[int]]] = []
        for n, ids in enumerate(token_ids):
            if self.pair:
                other = ids if second is None else second[n]
                keep_a, keep_b = longest_first(len(ids), len(other), budget)
                a, b = list(ids[:keep_a]), list(other[:keep_b])
                row = [*t.prefix, *a, *t.middle, *b, *t.suffix]
                types = [*t.prefix_types, *[t.type_a] * len(a), *t.middle_types, *[t.type_b] * len(b), *t.suffix_types]
                special = [1] * len(t.prefix) + [0] * len(a) + [1] * len(t.middle) + [0] * len(b) + [1] * len(t.suffix)
                first = [0] * len(t.prefix) + [1] * len(a) + [0] * (len(row) - len(t.prefix) - len(a))
            else:
                a = list(ids[:budget])
                row = [*t.prefix, *a, *t.suffix]
                types = [*t.prefix_types, *[t.type_a] * len(a), *t.suffix_types]
                special = [1] * len(t.prefix) + [0] * len(a) + [1] * len(t.suffix)
                first = [1 - s for s in special]
            rows.append((row, types, special, first))
        width = max(len(r[0]) for r in rows)
        pad = [width - len(r[0]) for r in rows]
        return {
            "input_ids": torch.tensor([r[0] + [self.pad_id] * p for r, p in zip(rows, pad)], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * p for r, p in zip(rows, pad)], dtype=torch.long),
            "token_type_ids": torch.tensor([r[1] + [self.pad_type_id] * p for r, p in zip(rows, pad)], dtype=torch.long),
            "special_tokens_mask": torch.tensor([r[2] + [1] * p for r, p in zip(rows, pad)], dtype=torch.long),
            "first_copy_mask": torch.tensor([r[3] + [0] * p for r, p in zip(rows, pad)], dtype=torch.long),
        }
