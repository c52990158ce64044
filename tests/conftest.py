"""Shared fixtures: a tiny random BERT cross-encoder built in-test, paths to ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE_CE = SHARED / "models" / "ce-minilm-l6-scifact"
SCIFACT = SHARED / "data" / "scifact"
SAMPLE = REPO / "ceindex" / "samples" / "tiny-science"

WORDS = (
    "the a of and to in is are was it for on with as by at from that this be or not "
    "cat dog plant light sugar energy cell cells glucose oxygen water carbon dioxide battery ion "
    "earth plate volcano star black hole gravity brain sleep memory heart bird bee sun".split()
)


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"SKIPPED LOUDLY: {path} is absent; put the shared data/models folder at {SHARED}")
    return path


@pytest.fixture(scope="session")
def tiny_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer BERT cross-encoder (hidden 32) with a real WordPiece tokenizer, saved to disk."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-ce")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def ceindex_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CEINDEX_HOME", str(home))
    return home


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
