"""The re-ranker's default pair length is the length the cross-encoder was trained at, read from its own files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ceindex.config import SearchConfig
from ceindex.models.runtime import DEFAULT_PAIR_MAX_LENGTH
from ceindex.models.scorer import CrossEncoderReranker
from tests.unit._tiny_models import build_tiny_ce

FIXTURE_CE = Path(__file__).resolve().parents[3] / "shared" / "models" / "ce-minilm-l6-scifact"
TINY_POSITIONS = 130  # max_position_embeddings of the tiny models


def _edit_tokenizer_config(folder: Path, **changes: object) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture()
def tiny_ce(tmp_path: Path) -> Path:
    return build_tiny_ce("bert", tmp_path / "ce")


def test_config_default_leaves_the_length_to_the_model() -> None:
    assert SearchConfig().rerank_max_length is None


def test_without_a_recorded_length_the_default_is_used_capped_by_positions(tiny_ce: Path) -> None:
    reranker = CrossEncoderReranker(str(tiny_ce), device="cpu")
    assert reranker.max_length == min(DEFAULT_PAIR_MAX_LENGTH, TINY_POSITIONS)
    assert reranker.max_length_source.startswith("default")


def test_saved_truncation_length_is_the_training_length(tiny_ce: Path) -> None:
    _edit_tokenizer_config(tiny_ce, max_length=96)
    reranker = CrossEncoderReranker(str(tiny_ce), device="cpu")
    assert (reranker.max_length, reranker.max_length_source) == (
        96, "the model's training length (tokenizer_config.json max_length)")


def test_model_max_length_below_the_positions_wins_over_the_saved_truncation(tiny_ce: Path) -> None:
    _edit_tokenizer_config(tiny_ce, max_length=96, model_max_length=64)
    assert CrossEncoderReranker(str(tiny_ce), device="cpu").max_length == 64


def test_model_max_length_equal_to_the_positions_says_nothing(tiny_ce: Path) -> None:
    _edit_tokenizer_config(tiny_ce, max_length=96, model_max_length=TINY_POSITIONS)
    assert CrossEncoderReranker(str(tiny_ce), device="cpu").max_length == 96


def test_roberta_model_max_length_at_its_position_limit_says_nothing(tmp_path: Path) -> None:
    # RoBERTa-family positions are the input limit + 2: a stock model_max_length (= the limit) is no training length
    folder = build_tiny_ce("roberta", tmp_path / "roberta")
    _edit_tokenizer_config(folder, model_max_length=TINY_POSITIONS - 2)
    reranker = CrossEncoderReranker(str(folder), device="cpu")
    assert reranker.max_length_source.startswith("default")
    _edit_tokenizer_config(folder, model_max_length=64)
    assert CrossEncoderReranker(str(folder), device="cpu").max_length == 64


def test_sentence_transformers_max_seq_length_wins(tiny_ce: Path) -> None:
    _edit_tokenizer_config(tiny_ce, max_length=96, model_max_length=100)
    (tiny_ce / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 80}))
    reranker = CrossEncoderReranker(str(tiny_ce), device="cpu")
    assert (reranker.max_length, reranker.max_length_source) == (
        80, "the model's training length (sentence_bert_config.json max_seq_length)")


def test_a_recorded_length_beyond_the_positions_is_capped(tiny_ce: Path) -> None:
    (tiny_ce / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096}))
    assert CrossEncoderReranker(str(tiny_ce), device="cpu").max_length == TINY_POSITIONS


def test_an_explicit_length_overrides_the_model(tiny_ce: Path) -> None:
    _edit_tokenizer_config(tiny_ce, max_length=96)
    reranker = CrossEncoderReranker(str(tiny_ce), max_length=40, device="cpu")
    assert (reranker.max_length, reranker.max_length_source) == (40, "set")


def test_fixture_ce_defaults_to_its_training_length() -> None:
    if not FIXTURE_CE.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: fixture cross-encoder {FIXTURE_CE} is absent (expected ../shared)")
    # MODEL_CARD.md: fine-tuned at 160 then 128 tokens; its tokenizer_config.json keeps max_length 128
    assert CrossEncoderReranker(str(FIXTURE_CE), device="cpu").max_length == 128
