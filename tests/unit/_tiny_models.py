"""Tiny random transformer checkpoints, one per supported family, built offline for tests.

BERT and ELECTRA get a WordPiece tokenizer read from a vocab file; RoBERTa, XLM-R and DeBERTa-v2
get a word-level ``tokenizers`` tokenizer with RoBERTa-style special tokens (<s>=0, <pad>=1, </s>=2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

WORDS = (
    "the a of and to in is are was it for on with as by at from that this be or not "
    "cat dog plant light sugar energy cell cells glucose oxygen water carbon dioxide battery ion "
    "earth plate volcano star black hole gravity brain sleep memory heart bird bee sun protein gene"
).split()
FAMILIES = ("bert", "electra", "roberta", "xlm-roberta", "deberta-v2")
DEPTH = 3
HIDDEN = 32


def _wordpiece_tokenizer(folder: Path, extra_words: Iterable[str] = ()):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS) | set(extra_words))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer.from_pretrained(str(folder))


def _roberta_style_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )


def build_tiny_ce(family: str, folder: Path, extra_words: Iterable[str] = ()) -> Path:
    """Save a random ``*ForSequenceClassification`` of ``family`` (3 layers, hidden 32) to ``folder``."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DebertaV2Config,
        ElectraConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = family in ("bert", "electra")
    tokenizer = _wordpiece_tokenizer(folder, extra_words) if wordpiece else _roberta_style_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=DEPTH, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = {
        "bert": lambda: BertConfig(**common),
        "electra": lambda: ElectraConfig(embedding_size=HIDDEN, **common),
        "roberta": lambda: RobertaConfig(bos_token_id=0, eos_token_id=2, **common),
        "xlm-roberta": lambda: XLMRobertaConfig(bos_token_id=0, eos_token_id=2, **common),
        "deberta-v2": lambda: DebertaV2Config(type_vocab_size=0, relative_attention=True,
                                              pos_att_type=["p2c", "c2p"], **common),
    }[family]()
    torch.manual_seed(1234)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sentence_transformer(folder: Path) -> Path:
    """A BERT model laid out as a sentence-transformers folder (mean pooling, max_seq_length 64)."""
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _wordpiece_tokenizer(folder)
    torch.manual_seed(99)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}), encoding="utf-8"
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}), encoding="utf-8")
    return folder
