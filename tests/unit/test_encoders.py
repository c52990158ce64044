"""Encoders on tiny random checkpoints of every supported family, plus the real fixture CE."""
from __future__ import annotations

import functools
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ceindex.errors import ConfigError, InputError, ModelError
from ceindex.models import EncoderConfig, encoder_config_from_description, load_encoder
from ceindex.models.ce_layer import CELayerEncoder, CrossEncoderLayers, find_layer_stack
from tests.unit._tiny_models import DEPTH, FAMILIES, build_tiny_ce, build_tiny_sentence_transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURE_CE = SHARED / "models" / "ce-minilm-l6-scifact"

TEXTS = [
    "the cat sat on the mat",
    "plant cells turn light and water and carbon dioxide into sugar and oxygen",
    "a black hole is a star",
    "bee",
    "the brain needs sleep for memory and the heart needs oxygen from the water of the earth",
    "gene protein cell",
]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ce(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ce("bert", tmp_path_factory.mktemp("bert-only"))


def _ce(path: Path, **kwargs) -> CELayerEncoder:
    values = {"model": str(path), "layer": 1, "device": "cpu", "batch_size": 4, "max_length": 128, **kwargs}
    return CELayerEncoder(EncoderConfig(**values))


def _reference(path: Path, texts: list[str], layer: int, self_pair: bool = True) -> np.ndarray:
    """Pool hidden_states[layer] of the FULL uncut model by hand: mean over non-special, non-pad tokens."""
    return _reference_all_layers(path, tuple(texts), self_pair)[layer]


@functools.lru_cache(maxsize=16)
def _reference_all_layers(path: Path, texts: tuple[str, ...], self_pair: bool) -> list[np.ndarray]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    specials = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # [UNK] is a real (unknown) word
    per_text = []
    for text in texts:  # one at a time: no padding involved at all
        enc = tokenizer(text, text if self_pair else None, truncation=True, max_length=128, return_tensors="pt")
        inputs = {k: v for k, v in enc.items() if k != "token_type_ids" or model.config.type_vocab_size >= 2}
        with torch.no_grad():
            hidden_states = model(**inputs, output_hidden_states=True).hidden_states
        keep = torch.tensor([i not in specials for i in enc["input_ids"][0].tolist()])
        vectors = [h[0][keep].mean(dim=0).numpy() for h in hidden_states]
        per_text.append([v / np.linalg.norm(v) for v in vectors])
    return [np.stack([row[layer] for row in per_text]) for layer in range(len(per_text[0]))]


# --------------------------------------------------------------------------- every family
def test_cut_model_equals_full_model_hidden_state(family_dir: Path) -> None:
    for layer in range(DEPTH + 1):
        encoder = _ce(family_dir, layer=layer)
        assert len(find_layer_stack(encoder.model)[2]) == layer  # later layers are really gone
        assert encoder.model.config.num_hidden_layers == layer
        vectors = encoder.encode(TEXTS)
        assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(vectors, _reference(family_dir, TEXTS, layer), atol=2e-5)


def test_multi_layer_one_pass_matches_single_layer_encoders(family_dir: Path) -> None:
    multi = CrossEncoderLayers(str(family_dir), [0, 1, 2], device="cpu", batch_size=4)
    calls = []
    multi.model.embeddings.register_forward_hook(lambda *args: calls.append(1))
    pooled = multi.encode_layers(TEXTS)
    assert len(calls) == 2  # ONE forward pass per batch (6 texts, batch 4), whatever the number of layers
    for layer in (0, 1, 2):
        np.testing.assert_allclose(pooled[layer], _ce(family_dir, layer=layer).encode(TEXTS), atol=1e-5)


def test_self_pair_mean_first_copy_and_single_differ(family_dir: Path) -> None:
    mean = _ce(family_dir).encode(TEXTS)
    first = _ce(family_dir, pooling="mean-first-copy").encode(TEXTS)
    single = _ce(family_dir, input_mode="single").encode(TEXTS)
    assert np.abs(mean - first).max() > 1e-3
    assert np.abs(mean - single).max() > 1e-3
    np.testing.assert_allclose(single, _reference(family_dir, TEXTS, 1, self_pair=False), atol=2e-5)


# --------------------------------------------------------------------------- batching and pooling
def test_length_sorted_batches_restore_input_order(bert_dir: Path) -> None:
    encoder = _ce(bert_dir, batch_size=2)
    shuffled = TEXTS[:]
    random.Random(7).shuffle(shuffled)
    together = encoder.encode(shuffled)
    one_by_one = np.concatenate([encoder.encode([t]) for t in shuffled])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_mean_pooling_ignores_padding(bert_dir: Path) -> None:
    encoder = _ce(bert_dir, batch_size=8)
    alone = encoder.encode(["bee"])[0]
    padded = encoder.encode(["bee", TEXTS[4]])[0]  # "bee" is padded to the long text's length
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_special_tokens_are_excluded_and_cls_pooling(bert_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(str(bert_dir)), AutoModel.from_pretrained(str(bert_dir)).eval()
    enc = tokenizer("the cat", "the cat", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[1][0]
    def unit(v: torch.Tensor) -> np.ndarray:
        return (v / v.norm()).numpy()
    # [CLS] the cat [SEP] the cat [SEP]: content = positions 1, 2, 4, 5
    np.testing.assert_allclose(_ce(bert_dir).encode(["the cat"])[0], unit(hidden[[1, 2, 4, 5]].mean(0)), atol=1e-5)
    np.testing.assert_allclose(_ce(bert_dir, pooling="mean-first-copy").encode(["the cat"])[0],
                               unit(hidden[[1, 2]].mean(0)), atol=1e-5)
    np.testing.assert_allclose(_ce(bert_dir, pooling="cls").encode(["the cat"])[0], unit(hidden[0]), atol=1e-5)
    with_specials = unit(hidden.mean(0))
    assert np.abs(_ce(bert_dir).encode(["the cat"])[0] - with_specials).max() > 1e-3


def test_self_pair_truncation_cuts_both_copies_equally(bert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_text = " ".join(["cat"] * 40)
    with caplog.at_level("INFO"):
        vector = _ce(bert_dir, max_length=21, pooling="mean-first-copy").encode([long_text, "bee"])
    assert np.isfinite(vector).all()
    assert "1 (50.0%) truncated to max_length=21" in caplog.text
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(bert_dir))(long_text, long_text, truncation="longest_first", max_length=21)
    ids = enc.sequence_ids()
    assert ids.count(0) == ids.count(1) == 9


# --------------------------------------------------------------------------- dtypes
def test_int8_and_bfloat16_are_close_to_float32(bert_dir: Path) -> None:
    reference = _ce(bert_dir).encode(TEXTS)
    for dtype, floor in (("int8", 0.9), ("bfloat16", 0.95)):
        encoder = _ce(bert_dir, dtype=dtype)
        vectors = encoder.encode(TEXTS)
        assert vectors.dtype == np.float32
        cosines = (vectors * reference).sum(axis=1)
        assert cosines.min() > floor, (dtype, cosines)
        assert encoder.describe().dtype == dtype
    quantized = _ce(bert_dir, dtype="int8").model
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())


# --------------------------------------------------------------------------- description
def test_describe_and_rebuild_from_description(bert_dir: Path) -> None:
    encoder = _ce(bert_dir, layer=2, pooling="mean-first-copy", max_length=64)
    desc = encoder.describe()
    expected_sha = hashlib.sha256((bert_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (desc.kind, desc.layer, desc.input_mode, desc.pooling, desc.max_length, desc.dims) == (
        "ce-layer", 2, "self-pair", "mean-first-copy", 64, 32)
    assert desc.weights_sha256 == expected_sha and desc.normalized
    assert desc.extra == {"model_type": "bert", "model_depth": DEPTH}
    rebuilt = load_encoder(encoder_config_from_description(desc, batch_size=2, device="cpu"))
    assert rebuilt.describe().differences(desc) == {}
    np.testing.assert_allclose(rebuilt.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)


# --------------------------------------------------------------------------- errors
def test_input_errors_name_the_index(bert_dir: Path) -> None:
    encoder = _ce(bert_dir)
    with pytest.raises(InputError, match="index 1 is empty"):
        encoder.encode(["cat", "   "])
    with pytest.raises(InputError, match="index 0 is int, not a string"):
        encoder.encode([3, "cat"])
    with pytest.raises(InputError, match="single string"):
        encoder.encode("cat")


def test_model_errors(bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match=r"layer 4 is beyond the depth .* has 3 transformer layers"):
        _ce(bert_dir, layer=4)
    with pytest.raises(ModelError, match="does not exist"):
        _ce(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="self-pair"):
        _ce(bert_dir, input_mode="single", pooling="mean-first-copy")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network wait
    with pytest.raises(ModelError) as err:
        load_encoder(EncoderConfig(model="no-such-org/no-such-model", device="cpu"))
    message = str(err.value)
    assert "could not be downloaded from the Hugging Face hub" in message
    assert "CEINDEX_CE_MODEL=/path/to/model" in message and "--encoder ce:/path/to/model" in message
    with pytest.raises(ModelError, match="CEINDEX_DE_MODEL"):
        load_encoder(EncoderConfig(kind="dual", model="no-such-org/no-such-de", device="cpu"))


def test_without_a_hub_a_hub_id_fails_after_one_quick_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub client retried each metadata request with backoff (~30 s, a screen of warnings) before the error."""
    import time

    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked: list[str] = []

    def no_hub(repo_id: str, **_: object) -> None:  # what the hub client raises when the host is unreachable
        asked.append(repo_id)
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "model_info", no_hub)
    begin = time.monotonic()
    with pytest.raises(ModelError, match=r"could not be downloaded from the Hugging Face hub \(ConnectionError"):
        load_encoder(EncoderConfig(model="no-such-org/no-such-model", device="cpu"))
    assert asked == ["no-such-org/no-such-model"] and time.monotonic() - begin < 5


def test_unrecognisable_layer_stack() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))

    with pytest.raises(ModelError, match="cannot find the transformer layer stack of Odd"):
        find_layer_stack(Odd())


# --------------------------------------------------------------------------- dual encoder
def test_dual_encoder_mean_pools_all_real_tokens(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from ceindex.models.dual import baseline_de_path

    folder = build_tiny_sentence_transformer(tmp_path / "st")
    encoder = load_encoder(EncoderConfig(kind="dual", model=str(folder), device="cpu", batch_size=2))
    assert encoder.describe().max_length == 64  # capped by sentence_bert_config.json
    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        hidden = model(**tokenizer("the cat", return_tensors="pt")).last_hidden_state[0]
    expected = hidden.mean(0) / hidden.mean(0).norm()  # sentence-transformers counts [CLS]/[SEP] too
    np.testing.assert_allclose(encoder.encode(["bee", "the cat", TEXTS[1]])[1], expected.numpy(), atol=1e-5)
    assert (baseline_de_path() / "config.json").is_file()


# --------------------------------------------------------------------------- the real fixture CE
def test_real_fixture_cross_encoder() -> None:
    if not FIXTURE_CE.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: fixture cross-encoder {FIXTURE_CE} is absent (expected ../shared)")
    encoder = load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=1, device="cpu"))
    assert encoder.dims == 384
    desc = encoder.describe()
    assert desc.weights_sha256 == "d4db1c839851e0d0e138943d30746e62eca07c3724b8fd0f4aa10232af5bf41e"
    assert (desc.kind, desc.layer, desc.input_mode, desc.pooling, desc.dims) == ("ce-layer", 1, "self-pair", "mean", 384)
    assert desc.extra == {"model_type": "bert", "model_depth": 6}
    vectors = encoder.encode(["Aspirin lowers the risk of heart attacks.", "Cats sleep a lot."])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_an_incomplete_cached_snapshot_falls_back_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id whose cache holds only some files (e.g. the tokenizer fetched first) is loaded from the hub, not
    reported as missing."""
    import huggingface_hub

    from ceindex.models.runtime import load_pretrained

    partial = tmp_path / "snapshot"
    partial.mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda ref, local_files_only: str(partial))
    monkeypatch.setattr(huggingface_hub, "model_info", lambda ref, timeout: None)  # the hub answers
    loaded: list[str] = []

    def loader(source: str) -> str:
        loaded.append(source)
        if source == str(partial):
            raise OSError("no file named model.safetensors")
        return f"model from {source}"

    assert load_pretrained("org/model", "ce-layer", loader, "cross-encoder") == "model from org/model"
    assert loaded == [str(partial), "org/model"]
