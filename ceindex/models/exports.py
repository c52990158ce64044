"""Exports of a transformer for ONNX Runtime and OpenVINO, cached on disk.

Two heads are exported: ``logits`` (the full cross-encoder's relevance logits, for the re-ranker) and ``hidden``
(the hidden states of chosen layers of a model cut to the deepest of them, for the early-layer and dual encoders).
The ONNX file comes from ``torch.onnx.export`` (batch and sequence axes dynamic); int8 for ONNX Runtime is its
dynamic quantisation of that file (``quantize_dynamic``: int8 weights, activations quantised per batch);
OpenVINO converts the ONNX file to its own IR, int8 there being NNCF's int8 weight compression.

An entry is a folder ``<root>/<head>-...-<runtime>-<dtype>-<key>`` named by the sha256 of everything that changes
the exported graph (the weights' and config's sha256, head, layers, input names, runtime, dtype, format version).
It is built in a hidden sibling folder and renamed into place once ``meta.json`` (the sha256 of every file) is
written, so two processes never see half an entry; an entry whose files do not match ``meta.json`` is moved aside
and rebuilt. Nothing here touches the network.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ceindex.errors import ModelError
from ceindex.models.runtime import _quiet_warnings

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the exported graph changes for the same key
HOME_ENV = "CEINDEX_HOME"
META = "meta.json"
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"
OPSET = 17
HEADS = ("logits", "hidden")

# the torch forward pass to export: model inputs by name -> the head's outputs, in ``output_names`` order
Forward = Callable[[dict[str, torch.Tensor]], Sequence[torch.Tensor]]


def default_export_root() -> Path:
    """``$CEINDEX_HOME/cache/exports`` (else ``~/.ceindex/cache/exports``): where exports go without a --home."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".ceindex").expanduser() / "cache" / "exports"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportKey:
    """Everything that changes an exported graph; ``digest`` names its cache entry."""

    weights_sha256: str
    config_sha256: str
    head: str  # "logits" or "hidden"
    layers: tuple[int, ...]  # hidden states returned, in order (head "hidden"); () for "logits"
    depth: int  # transformer layers the exported model runs
    input_names: tuple[str, ...]
    runtime: str  # "onnx" or "openvino"
    dtype: str  # "float32" or "int8"

    def digest(self) -> str:
        payload = json.dumps(asdict(self) | {"format": EXPORT_FORMAT}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def folder_name(self) -> str:
        layers = f"-L{'_'.join(map(str, self.layers))}" if self.head == "hidden" else ""
        return f"{self.head}{layers}-{self.runtime}-{self.dtype}-{self.digest()[:20]}"

    def variant(self, runtime: str, dtype: str) -> "ExportKey":
        return replace(self, runtime=runtime, dtype=dtype)


# --------------------------------------------------------------------------- the cache
def ensure_export(key: ExportKey, root: Path, build: Callable[[Path], None]) -> Path:
    """The folder of ``key``'s entry under ``root``; ``build(folder)`` writes its files when it is missing or
    corrupt. Safe against a concurrent builder: the first complete rename wins, the others use its entry."""
    entry = Path(root) / key.folder_name()
    if entry_is_valid(entry):
        log.debug("export cache hit: %s", entry)
        return entry
    if entry.exists():
        log.warning("export cache entry %s is incomplete or corrupt; rebuilding it", entry)
        discard(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        log.info("exporting %s (%s, %s) to %s", key.head, key.runtime, key.dtype, entry)
        build(tmp)
        _write_meta(tmp, key)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process published the same entry first: use its copy
            if not entry_is_valid(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def entry_is_valid(entry: Path) -> bool:
    """Whether ``entry`` has its ``meta.json`` and every file it lists, with the sha256 recorded there."""
    try:
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        files = meta["files"]
        return bool(files) and all(file_sha256(entry / name) == sha for name, sha in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def discard(entry: Path) -> None:
    """Move ``entry`` aside (one rename, so no reader sees it half-deleted), then delete it."""
    aside = entry.parent / f".{entry.name}.corrupt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _write_meta(folder: Path, key: ExportKey) -> None:
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != META}
    if not files:
        raise ModelError(f"the export of {key.head} ({key.runtime}, {key.dtype}) wrote no files")
    meta = {"key": asdict(key), "format": EXPORT_FORMAT, "torch": torch.__version__, "files": files}
    (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")


# --------------------------------------------------------------------------- the exporters
class _Head(torch.nn.Module):
    """Positional inputs (ONNX needs them) in, the outputs of ``forward`` (the torch code path itself) out."""

    def __init__(self, model: torch.nn.Module, forward: Forward, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.run, self.names = model, forward, tuple(names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.run(dict(zip(self.names, tensors))))


def output_names(key: ExportKey) -> list[str]:
    return ["logits"] if key.head == "logits" else [f"hidden_{layer}" for layer in key.layers]


def example_inputs(names: Sequence[str], vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Two rows of 16 tokens, the second padded: the traced graph keeps the attention-mask path."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, min(vocab_size, 1000)), (2, 16), generator=generator)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    types = torch.zeros(2, 16, dtype=torch.long)
    types[:, 8:] = 1
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(by_name[name] for name in names)


def export_onnx(model: torch.nn.Module, forward: Forward, key: ExportKey, folder: Path) -> None:
    """``forward`` over ``model`` (float32, CPU) traced into ``folder/model.onnx``, batch and sequence axes
    dynamic."""
    unknown = set(key.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ModelError(f"cannot export a model that takes {sorted(unknown)}; use --runtime torch")
    wrapper = _Head(model, forward, key.input_names).eval()
    was_training = model.training
    args = example_inputs(key.input_names, int(getattr(model.config, "vocab_size", 1000)))
    dynamic = {name: {0: "batch", 1: "tokens"} for name in key.input_names}
    dynamic |= {name: {0: "batch", 1: "tokens"} for name in output_names(key)} if key.head == "hidden" else {
        "logits": {0: "batch"}}
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet_warnings():
            torch.onnx.export(wrapper, args, str(folder / ONNX_FILE), input_names=list(key.input_names),
                              output_names=output_names(key), dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; say what to do
        raise ModelError(
            f"cannot export {type(model).__name__} to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
            "use --runtime torch") from exc
    finally:
        model.train(was_training)


def quantize_onnx(source: Path, folder: Path) -> None:
    """ONNX Runtime dynamic int8: int8 weights (per output channel), activations quantised per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_warnings():
        quantize_dynamic(str(source / ONNX_FILE), str(folder / ONNX_FILE), weight_type=QuantType.QInt8,
                         per_channel=True)


def convert_openvino(source: Path, dtype: str, folder: Path) -> None:
    """The ONNX export as OpenVINO IR, float32 weights kept as float32 (not OpenVINO's default fp16 compression);
    int8 = NNCF's int8 weight compression (asymmetric, per channel). Read with the runtime's ONNX reader, not
    ``ov.convert_model``."""
    ov = import_openvino()
    model = ov.Core().read_model(str(source / ONNX_FILE))
    if dtype == "int8":
        nncf = import_nncf()
        with _quiet_warnings():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(folder / OPENVINO_FILE), compress_to_fp16=False)



@contextlib.contextmanager
def _no_usage_telemetry() -> Iterator[None]:
    """OpenVINO sends a usage event when it is imported (its openvino.tools.ovc) and NNCF one per call, through the
    openvino_telemetry package unless the user opted out; with that package unimportable both use their stubs."""
    saved = sys.modules.get("openvino_telemetry")
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment] - makes the import raise ImportError
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("openvino_telemetry", None)
        else:
            sys.modules["openvino_telemetry"] = saved


def import_openvino() -> Any:
    """The openvino module, imported without usage telemetry."""
    with _no_usage_telemetry():
        import openvino
    return openvino


def import_nncf() -> Any:
    with _no_usage_telemetry():
        import nncf
    logging.getLogger("nncf").setLevel(logging.WARNING)  # not its per-call INFO table of bit widths on stdout
    return nncf
