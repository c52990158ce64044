"""--runtime onnx / openvino on tiny random in-test models: outputs equal torch's, the export cache's keys, reuse,
corrupt-entry rebuild, atomic publication, and the settings that choose a runtime."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ceindex.errors import ConfigError, ModelError
from ceindex.models import EncoderConfig, encoder_config_from_description, load_encoder
from ceindex.models import exports
from ceindex.models.exports import ExportKey, ensure_export, entry_is_valid
from ceindex.models.scorer import CrossEncoderReranker
from tests.unit._tiny_models import WORDS, build_tiny_ce

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUNTIMES = ("onnx", "openvino")
PAIRS = [(" ".join(WORDS[i : i + 3]), " ".join(WORDS[i * 2 % 40 : i * 2 % 40 + 9 + i])) for i in range(12)]
TEXTS = [" ".join(WORDS[i : i + 2 + 3 * i]) for i in range(8)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ce("bert", tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ce("roberta", tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


def _scores(model: Path, root: Path, runtime: str = "torch", dtype: str = "float32") -> np.ndarray:
    reranker = CrossEncoderReranker(str(model), batch_size=5, max_length=32, device="cpu", runtime=runtime,
                                    dtype=dtype, export_root=root)
    return reranker.score(PAIRS)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


# --------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_rerank_scores_equal_torch(family: str, runtime: str, request: pytest.FixtureRequest, root: Path) -> None:
    model = request.getfixturevalue(family)
    reference = _scores(model, root)
    scores = _scores(model, root, runtime)
    assert scores.shape == reference.shape
    assert np.abs(scores - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("layer", [0, 1, 3])
def test_ce_layer_vectors_equal_torch(bert: Path, root: Path, runtime: str, layer: int) -> None:
    config = EncoderConfig(model=str(bert), layer=layer, max_length=40, batch_size=3, device="cpu")
    reference = load_encoder(config).encode(TEXTS)
    encoder = load_encoder(replace(config, runtime=runtime), export_root=root)
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.abs(vectors - reference).max() <= 1e-5
    assert encoder.describe().runtime == runtime


def test_dual_encoder_vectors_equal_torch(bert: Path, root: Path) -> None:
    config = EncoderConfig(kind="dual", model=str(bert), max_length=40, batch_size=3, device="cpu")
    reference = load_encoder(config).encode(TEXTS)
    assert np.abs(load_encoder(replace(config, runtime="onnx"), export_root=root).encode(TEXTS) - reference).max() <= 1e-5


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_stays_close_on_tiny_model(bert: Path, root: Path, runtime: str) -> None:
    """int8 is the runtime's own quantisation: not equal, but correlated (a random hidden-32 model's logits span
    little, so quantisation noise is large here; the fixture CE's int8 ranking is tested in test_runtime_fixture)."""
    reference = _scores(bert, root)
    scores = _scores(bert, root, runtime, "int8")
    assert not np.array_equal(scores, reference)
    assert np.corrcoef(scores, reference)[0, 1] > 0.6


# --------------------------------------------------------------------------- the cache
def test_cache_keys_differ_by_weights_layer_runtime_and_dtype(bert: Path, tmp_path: Path) -> None:
    other = build_tiny_ce("bert", tmp_path / "other")
    weights = other / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("classifier.weight"))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    root = tmp_path / "exports"
    _scores(bert, root, "onnx")
    _scores(other, root, "onnx")
    assert len([e for e in _entries(root) if e.startswith("logits-onnx-float32")]) == 2  # two weights, two exports
    for layer in (1, 2):
        load_encoder(EncoderConfig(model=str(bert), layer=layer, max_length=32, device="cpu", runtime="onnx"),
                     export_root=root)
    assert {"hidden-L1-onnx-float32", "hidden-L2-onnx-float32"} <= {e.rsplit("-", 1)[0] for e in _entries(root)}
    _scores(bert, root, "openvino")
    _scores(bert, root, "onnx", "int8")
    names = _entries(root)
    assert any(e.startswith("logits-openvino-float32") for e in names)
    assert any(e.startswith("logits-onnx-int8") for e in names)
    assert len(names) == len(set(n.rsplit("-", 1)[1] for n in names))  # one key, one folder


def test_key_digest_covers_every_field() -> None:
    key = ExportKey("a" * 64, "c" * 64, "hidden", (1,), 1, ("attention_mask", "input_ids"), "onnx", "float32")
    changed = [replace(key, weights_sha256="b" * 64), replace(key, config_sha256="d" * 64), replace(key, layers=(2,)),
               replace(key, depth=2), replace(key, input_names=("input_ids",)), replace(key, runtime="openvino"),
               replace(key, dtype="int8"), replace(key, head="logits")]
    assert len({k.digest() for k in changed} | {key.digest()}) == len(changed) + 1


def test_second_load_reuses_the_export_without_network(bert: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "exports"
    first = _scores(bert, root, "openvino")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    def refuse(*_args, **_kwargs):
        raise AssertionError("exported again although the cache has the entry")

    def no_network(*_args, **_kwargs):
        raise AssertionError("loading a cached export opened a network connection")

    monkeypatch.setattr(exports.torch.onnx, "export", refuse)
    monkeypatch.setattr("ceindex.models.runners.convert_openvino", refuse)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert np.array_equal(_scores(bert, root, "openvino"), first)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-meta"])
def test_corrupt_entry_is_rebuilt(bert: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "exports"
    reference = _scores(bert, root, "onnx")
    (entry,) = [root / e for e in _entries(root)]
    model = entry / "model.onnx"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    else:
        (entry / "meta.json").unlink()
    assert not entry_is_valid(entry)
    assert np.array_equal(_scores(bert, root, "onnx"), reference)
    assert entry_is_valid(entry)
    assert "rebuilding" in caplog.text


def test_concurrent_builders_publish_one_whole_entry(tmp_path: Path) -> None:
    key = ExportKey("a" * 64, "", "logits", (), 1, ("input_ids",), "onnx", "float32")
    started = threading.Barrier(4)

    def build(folder: Path) -> None:
        started.wait()
        (folder / "model.onnx").write_bytes(b"x" * 100_000)
        time.sleep(0.05)

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_export(key, tmp_path, build))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and entry_is_valid(results[0])
    assert os.listdir(tmp_path) == [results[0].name]  # no temp folder left behind
    assert json.loads((results[0] / "meta.json").read_text())["key"]["runtime"] == "onnx"


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    key = ExportKey("a" * 64, "", "logits", (), 1, ("input_ids",), "onnx", "float32")

    def build(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise ModelError("export failed")

    with pytest.raises(ModelError):
        ensure_export(key, tmp_path, build)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- settings
def test_runtime_settings_are_checked(bert: Path) -> None:
    with pytest.raises(ConfigError, match="runtime"):
        EncoderConfig(runtime="tensorrt")
    with pytest.raises(ConfigError, match="bfloat16"):
        EncoderConfig(runtime="onnx", dtype="bfloat16")
    with pytest.raises(ConfigError, match="bfloat16"):
        CrossEncoderReranker(str(bert), device="cpu", runtime="openvino", dtype="bfloat16")
    with pytest.raises(ConfigError, match="CPU"):
        CrossEncoderReranker(str(bert), device="cuda", runtime="onnx")


def test_description_records_the_runtime_and_queries_reuse_it(bert: Path, root: Path) -> None:
    encoder = load_encoder(EncoderConfig(model=str(bert), layer=1, max_length=32, device="cpu", runtime="onnx"),
                           export_root=root)
    desc = encoder.describe()
    assert desc.runtime == "onnx" and desc.build_key()["runtime"] == "onnx"
    assert "runtime" not in desc.compatibility_key()  # a torch query encoder may search an onnx-built index
    assert encoder_config_from_description(desc).runtime == "onnx"
    assert encoder_config_from_description(desc, runtime="torch").runtime == "torch"
    old = {k: v for k, v in desc.to_dict().items() if k != "runtime"}  # an index built before runtimes existed
    assert type(desc).from_dict(old).runtime == "torch"


def test_threads_are_set_once_from_torch(bert: Path, root: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reranker = CrossEncoderReranker(str(bert), device="cpu", runtime="onnx", export_root=root, max_length=32)
    finally:
        torch.set_num_threads(before)
    assert reranker._runner.session.get_session_options().intra_op_num_threads == 1



TELEMETRY_PROBE = """
import sys
from openvino_telemetry import main as telemetry
sent = []
for name in ("send_event", "start_session", "end_session", "force_shutdown"):
    setattr(telemetry.Telemetry, name, lambda self, *a, _name=name, **k: sent.append((_name, a)))
from ceindex.models.scorer import CrossEncoderReranker
CrossEncoderReranker(sys.argv[1], device="cpu", runtime="openvino", dtype="int8", export_root=sys.argv[2],
                     max_length=32).score([("cat", "the cat sat")])
print("SENT", sent)
"""


def test_openvino_sends_no_usage_telemetry(bert: Path, tmp_path: Path) -> None:
    """`import openvino` reports a usage event (openvino.tools.ovc) and NNCF one per call, through openvino_telemetry
    unless the user opted out; ceindex imports both with that package blocked. A fresh interpreter, as a user's."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE, str(bert), str(tmp_path / "exports")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SENT []" in done.stdout, done.stdout[-2000:]


def test_entry_the_runtime_cannot_read_is_rebuilt(bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files that match meta.json but that ONNX Runtime refuses (e.g. written by another version): rebuilt once."""
    root = tmp_path / "exports"
    reference = _scores(bert, root, "onnx")
    (entry,) = [root / e for e in _entries(root)]
    (entry / "model.onnx").write_bytes(b"not an onnx model")
    meta = json.loads((entry / "meta.json").read_text())
    meta["files"]["model.onnx"] = exports.file_sha256(entry / "model.onnx")
    (entry / "meta.json").write_text(json.dumps(meta))
    assert entry_is_valid(entry)
    assert np.array_equal(_scores(bert, root, "onnx"), reference)
    assert "failed to load" in caplog.text


@pytest.mark.parametrize("runtime,package", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_missing_runtime_keeps_the_cache_and_says_what_to_install(bert: Path, tmp_path: Path, runtime: str,
                                                                   package: str, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """No ``runtimes`` extra (the package does not import): a ConfigError naming the extra and --runtime torch,
    raised before the cache is touched: the valid export stays as it was, nothing is rebuilt."""
    root = tmp_path / "exports"
    _scores(bert, root, runtime)
    before = {name: (root / name / "meta.json").stat().st_ino for name in _entries(root)}
    monkeypatch.setitem(__import__("sys").modules, package, None)  # as on an install without the extra
    with pytest.raises(ConfigError) as raised:
        _scores(bert, root, runtime)
    message = str(raised.value)
    assert package in message and "pip install 'ceindex[runtimes]'" in message and "--runtime torch" in message
    assert {name: (root / name / "meta.json").stat().st_ino for name in _entries(root)} == before
    assert all(entry_is_valid(root / name) for name in before)
    assert "rebuilding" not in caplog.text


def test_export_root_may_be_a_str(bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A str root works on every path, the rebuild of an entry the runtime cannot read included."""
    root = tmp_path / "exports"
    reference = _scores(bert, str(root), "onnx")  # type: ignore[arg-type]
    (entry,) = [root / e for e in _entries(root)]
    (entry / "model.onnx").write_bytes(b"not an onnx model")
    meta = json.loads((entry / "meta.json").read_text())
    meta["files"]["model.onnx"] = exports.file_sha256(entry / "model.onnx")
    (entry / "meta.json").write_text(json.dumps(meta))
    assert np.array_equal(_scores(bert, str(root), "onnx"), reference)  # type: ignore[arg-type]
    assert "failed to load" in caplog.text and entry_is_valid(entry)
