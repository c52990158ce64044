"""Inputs assembled from once-computed token ids equal the tokenizer's own, token for token."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ceindex.errors import ConfigError
from ceindex.models.assemble import InputAssembler, longest_first
from tests.conftest import FIXTURE_CE, SCIFACT, SHARED
from tests.unit._tiny_models import FAMILIES, WORDS, build_tiny_ce


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 90))) for _ in range(n)]


def _assert_same_as_tokenizer(tokenizer, texts: list[str], self_pair: bool, max_length: int,
                              second: list[str] | None = None) -> None:
    """``second``: pair each text with these (query + document) instead of with itself."""
    assembler = InputAssembler.for_tokenizer(tokenizer, pair=self_pair or second is not None)
    assert assembler is not None, "a fast tokenizer with a template post-processor must be mirrored"
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    second_ids = tokenizer(second, add_special_tokens=False)["input_ids"] if second is not None else None
    ours = assembler(ids, max_length, second=second_ids)
    partner = second if second is not None else (texts if self_pair else None)
    ref = tokenizer(texts, partner, truncation="longest_first", max_length=max_length,
                    padding=True, return_special_tokens_mask=True, return_token_type_ids=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        assert torch.equal(ours[key], ref[key]), f"{key} differs (self_pair={self_pair}, max_length={max_length})"
    if self_pair:
        first = torch.tensor([[1 if s == 0 else 0 for s in ref.sequence_ids(i)] for i in range(len(texts))])
        assert torch.equal(ours["first_copy_mask"], first)


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_tokenizer_for_every_family(family: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_ce(family, tmp_path / family)))
    texts = _texts(40, seed=7)
    for self_pair in (True, False):
        for max_length in (9, 16, 63, 64, 128, 300):  # odd and even budgets, none / some / all truncated
            _assert_same_as_tokenizer(tokenizer, texts, self_pair, max_length)
    queries = _texts(40, seed=8)  # query + document pairs of unequal lengths, as the re-ranker feeds them
    for max_length in (9, 40, 64, 301):
        _assert_same_as_tokenizer(tokenizer, queries, False, max_length, second=texts)


def test_longest_first_matches_the_tokenizer_on_unequal_pairs(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_ce("bert", tmp_path / "bert")))
    rng = random.Random(3)
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for _ in range(200):
        a, b = _texts(1, rng.randint(0, 10**6))[0], _texts(1, rng.randint(0, 10**6))[0]
        max_length = rng.randint(special + 1, 200)
        enc = tokenizer(a, b, truncation="longest_first", max_length=max_length)
        seq = enc.sequence_ids()
        kept = (seq.count(0), seq.count(1))
        n1, n2 = (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (a, b))
        assert longest_first(n1, n2, max_length - special) == kept, (n1, n2, max_length)


def test_left_side_truncation_falls_back_to_the_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_ce("bert", tmp_path / "bert")))
    tokenizer.truncation_side = "left"
    assert InputAssembler.for_tokenizer(tokenizer, pair=True) is None


@pytest.mark.skipif(not FIXTURE_CE.is_dir() or not SCIFACT.is_dir(),
                    reason=f"LOUD SKIP: the fixture CE / SciFact are absent under {SHARED}")
def test_matches_the_fixture_tokenizer_on_scifact() -> None:
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURE_CE))
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as lines:
        docs = [json.loads(next(lines)) for _ in range(64)]
    texts = [f"{d['title']} {d['text']}".strip() for d in docs] + ["[SEP] literal special tokens [CLS] é ü 中文"]
    for self_pair in (True, False):
        for max_length in (127, 256):
            _assert_same_as_tokenizer(tokenizer, texts, self_pair, max_length)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_reranker_scores_equal_the_tokenizer_path(family: str, tmp_path: Path) -> None:
    from ceindex.models.scorer import CrossEncoderReranker

    reranker = CrossEncoderReranker(str(build_tiny_ce(family, tmp_path / family)), batch_size=4, max_length=40,
                                    device="cpu")
    assert reranker._assembler is not None  # noqa: SLF001
    queries, docs = _texts(5, seed=11), _texts(9, seed=12)  # lengths from 1 to 90 words: many pairs truncated
    pairs = [(q, d) for q in queries for d in docs]
    assembled = reranker.score(pairs)
    reranker._assembler = None  # noqa: SLF001 - the tokenizer's own pair encoding
    reference = reranker.score(pairs)
    assert np.unique(assembled).size > 10, "scores should vary with the pair"
    np.testing.assert_allclose(assembled, reference, rtol=0, atol=1e-6)


def test_unusual_post_processors_are_learnt_or_refused(tmp_path: Path) -> None:
    from tokenizers import processors
    from transformers import AutoTokenizer

    folder = build_tiny_ce("bert", tmp_path / "bert")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    specials = [("[CLS]", tokenizer.cls_token_id), ("[SEP]", tokenizer.sep_token_id)]
    # a template with more special tokens in the middle and at the end: learnt, and then exact
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] [SEP]:1 $B:1 [SEP]:1 [SEP]:1", special_tokens=specials)
    assert InputAssembler.for_tokenizer(tokenizer, pair=True) is not None
    _assert_same_as_tokenizer(tokenizer, _texts(20, seed=5), True, 33)
    # the second sequence placed first: not a template the assembler can express, so it must refuse
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $B:1 [SEP]:1 $A [SEP]", special_tokens=specials)
    assert InputAssembler.for_tokenizer(tokenizer, pair=True) is None
    with pytest.raises(ConfigError, match="no room for text"):
        InputAssembler.for_tokenizer(AutoTokenizer.from_pretrained(str(folder)), pair=True)([[5, 6]], 3)


@pytest.fixture()
def unwarned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which tokenizer classes were warned about (other tests may have fallen back already)."""
    from ceindex.models import assemble

    monkeypatch.setattr(assemble, "_warned_classes", set())


def _python_tokenizer(folder: Path):
    """The pure-Python ("slow") BERT tokenizer of ``folder``: the assembler never mirrors one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=False)
    if tokenizer.is_fast:  # transformers 5: BertTokenizer is the Rust one, the Python one is BertTokenizerLegacy
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        tokenizer = BertTokenizerLegacy.from_pretrained(str(folder))
    assert not tokenizer.is_fast
    return tokenizer


def _fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ceindex.models.assemble" and r.levelno == logging.WARNING]


def test_fallback_is_warned_once_per_tokenizer_class_and_every_batch_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    from transformers import AutoModel, AutoTokenizer

    from ceindex.models.embedder import Embedder, PoolingSpec

    folder = build_tiny_ce("bert", tmp_path / "bert")
    model = AutoModel.from_pretrained(str(folder)).eval()

    def embedder(tokenizer) -> Embedder:
        return Embedder(model, tokenizer, PoolingSpec(self_pair=True), max_length=40, batch_size=2,
                        device=torch.device("cpu"), depth=model.config.num_hidden_layers)

    texts = _texts(5, seed=1)  # batches of 2: three batches per encode
    caplog.set_level(logging.INFO)
    slow = embedder(_python_tokenizer(folder))
    other_slow = embedder(_python_tokenizer(folder))
    for _ in range(3):
        slow.embed(texts, [1])
    other_slow.embed(texts, [1])
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1, warnings  # one class: once, not per encoder, encode or batch
    assert warnings[0].startswith(f"{type(slow.tokenizer).__name__}: ") and "not a fast (Rust) tokenizer" in warnings[0]
    assert (slow.fallback_batches, other_slow.fallback_batches) == (9, 3)

    fast = embedder(AutoTokenizer.from_pretrained(str(folder)))  # mirrored: no warning, nothing counted
    fast.embed(texts, [1])
    assert fast.fallback_batches == 0 and len(_fallback_warnings(caplog)) == 1

    left = AutoTokenizer.from_pretrained(str(folder))
    left.truncation_side = "left"
    for _ in range(2):
        embedder(left).embed(texts, [1])
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 2, warnings  # another class: its own warning, once
    assert warnings[1].startswith(f"{type(left).__name__}: ") and "truncates on the left" in warnings[1]


def test_reranker_fallback_is_warned_once_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      unwarned: None) -> None:
    import json

    from ceindex.models.scorer import CrossEncoderReranker

    folder = build_tiny_ce("bert", tmp_path / "bert")
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"truncation_side": "left"}))
    caplog.set_level(logging.INFO)
    pairs = [(q, d) for q in _texts(2, seed=3) for d in _texts(5, seed=4)]  # 10 pairs in batches of 4: 3 batches
    first, second = (CrossEncoderReranker(str(folder), batch_size=4, max_length=40, device="cpu") for _ in range(2))
    first.score(pairs)
    first.score(pairs)
    second.score(pairs[:4])
    assert (first.fallback_batches, second.fallback_batches) == (6, 1)
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"{type(first.tokenizer).__name__}: "), warnings
    assert "truncates on the left" in warnings[0]
