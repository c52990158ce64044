"""Which runtime runs a model's forward pass: torch (the module itself), ONNX Runtime or OpenVINO.

``open_runner`` returns None for torch (the caller keeps calling its module) and otherwise a runner that takes the
same input tensors as the module and returns the head's outputs as float32 CPU tensors, from an export cached by
``ceindex.models.exports``. Threads are set once, when the session / compiled model is made: ONNX Runtime's
intra-op threads and OpenVINO's inference threads = torch's thread count at that moment (``torch.set_num_threads``
before loading changes all three). A runner is shared by every thread that scores or encodes: ONNX Runtime's
``InferenceSession.run`` is safe to call concurrently; OpenVINO gets one infer request per thread.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ceindex.errors import ConfigError, ModelError
from ceindex.models.config import RUNTIMES
from ceindex.models.exports import (
    ONNX_FILE,
    OPENVINO_FILE,
    ExportKey,
    Forward,
    convert_openvino,
    default_export_root,
    discard,
    ensure_export,
    export_onnx,
    import_nncf,
    import_openvino,
    output_names,
    quantize_onnx,
)
from ceindex.models.runtime import resolve_device, weights_sha256

log = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "int8")


@dataclass(frozen=True)
class RuntimeSpec:
    """How to run a model: ``runtime`` and ``dtype``, the folder of its weights (hashed into the export's key),
    the export cache root (None = ``$CEINDEX_HOME/cache/exports``), and what the export returns."""

    runtime: str = "torch"
    dtype: str = "float32"
    model_dir: Path | None = None
    export_root: Path | None = None
    head: str = "hidden"
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_runtime(self.runtime, self.dtype)


def check_runtime(runtime: str, dtype: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime != "torch" and dtype not in EXPORT_DTYPES:
        raise ConfigError(f"dtype {dtype!r} runs on --runtime torch only; runtime {runtime} takes "
                          f"{' or '.join(EXPORT_DTYPES)}")


def torch_placement(runtime: str, dtype: str, device: str) -> tuple[str, torch.device]:
    """(dtype, device) of the torch module: as asked for torch; float32 on the CPU for an export (the runtime
    quantises the export itself)."""
    check_runtime(runtime, dtype)
    if runtime == "torch":
        return dtype, resolve_device(device)
    if device == "cuda":
        raise ConfigError(f"runtime {runtime} runs on the CPU here; use --device cpu (or auto), or --runtime torch")
    return "float32", torch.device("cpu")


def open_runner(model: torch.nn.Module, spec: RuntimeSpec, input_names: Sequence[str],
                forward: Forward) -> "OnnxRunner | OpenVinoRunner | None":
    """None for torch; else the runner of the export of ``forward`` (the torch code path: ``model``'s inputs by
    name -> the head's outputs), made and cached on first use."""
    if spec.runtime == "torch":
        return None
    if spec.model_dir is None:
        raise ModelError(f"runtime {spec.runtime} needs the model's folder to key its export")
    key = ExportKey(
        weights_sha256=weights_sha256(spec.model_dir), config_sha256=_config_sha256(spec.model_dir),
        head=spec.head, layers=tuple(spec.layers), depth=int(getattr(model.config, "num_hidden_layers", 0)),
        input_names=tuple(sorted(input_names)), runtime=spec.runtime, dtype=spec.dtype)
    require_runtime(spec.runtime, spec.dtype)  # before the cache: a missing runtime is no reason to rebuild
    root = Path(spec.export_root) if spec.export_root is not None else default_export_root()
    threads = torch.get_num_threads()
    entry = _export(model, forward, key, root, spec)
    try:
        return _open(entry, key, threads)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime's reader refuses a valid-looking entry: rebuild it once
        log.warning("the cached export %s failed to load (%s); rebuilding it", key.folder_name(), exc)
        discard(entry)
    entry = _export(model, forward, key, root, spec)
    try:
        return _open(entry, key, threads)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime cannot run this model at all
        raise _cannot_run(spec, exc) from exc


# the packages each runtime (and its int8 step) imports; all are in the ``runtimes`` extra
_RUNTIME_PACKAGES = {("onnx", "float32"): ("onnxruntime",), ("onnx", "int8"): ("onnxruntime", "onnx"),
                     ("openvino", "float32"): ("openvino",), ("openvino", "int8"): ("openvino", "nncf")}


def require_runtime(runtime: str, dtype: str) -> None:
    """ConfigError naming what to install when a package ``runtime`` (at ``dtype``) needs does not import."""
    for package in _RUNTIME_PACKAGES.get((runtime, dtype), ()):
        try:
            if package == "openvino":
                import_openvino()
            elif package == "nncf":
                import_nncf()
            else:
                importlib.import_module(package)
        except Exception as exc:  # noqa: BLE001 - missing (ImportError) or broken (e.g. OSError from its library)
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            raise ConfigError(
                f"runtime {runtime} ({dtype}) needs the {package} package, which did not import ({detail}); "
                f"install the runtimes extra: pip install 'ceindex[runtimes]', or run on torch: --runtime torch "
                f"(--rerank-runtime torch for the re-ranker)") from exc


def _export(model: torch.nn.Module, forward: Forward, key: ExportKey, root: Path, spec: RuntimeSpec) -> Path:
    """The folder of the export ``key`` (made when missing or corrupt); a failure to make it is a ModelError."""
    try:
        return _ensure(model, forward, key, root)
    except (ModelError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter cannot trace / convert this model
        raise _cannot_run(spec, exc) from exc


def _cannot_run(spec: RuntimeSpec, exc: BaseException) -> ModelError:
    return ModelError(f"{spec.runtime} ({spec.dtype}) cannot run {spec.model_dir} ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); use --runtime torch")


def _ensure(model: torch.nn.Module, forward: Forward, key: ExportKey, root: Path) -> Path:
    onnx_key = key.variant("onnx", "float32")
    onnx_fp32 = ensure_export(onnx_key, root, lambda folder: export_onnx(model, forward, onnx_key, folder))
    if key.runtime == "onnx":
        return onnx_fp32 if key.dtype == "float32" else ensure_export(
            key, root, lambda folder: quantize_onnx(onnx_fp32, folder))
    return ensure_export(key, root, lambda folder: convert_openvino(onnx_fp32, key.dtype, folder))


def _open(entry: Path, key: ExportKey, threads: int) -> "OnnxRunner | OpenVinoRunner":
    """The runtime's reader over a made entry (its errors are the ones that discard the entry)."""
    if key.runtime == "onnx":
        return OnnxRunner(entry / ONNX_FILE, key, threads)
    return OpenVinoRunner(entry / OPENVINO_FILE, key, threads)


def _config_sha256(model_dir: Path) -> str:
    config = Path(model_dir) / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""


def _feed(inputs: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ModelError(f"the exported model needs inputs {missing} that the batch does not have")
    return {name: np.ascontiguousarray(inputs[name].detach().cpu().numpy(), dtype=np.int64) for name in names}


class OnnxRunner:
    """One ONNX Runtime session (CPU), shared by all threads."""

    def __init__(self, path: Path, key: ExportKey, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # the exporter drops an input the graph never reads (the attention mask of a layer-0 export)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names, self.layers = output_names(key), key.layers
        self.path = path

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.session.run(self.output_names, _feed(inputs, self.input_names))
        return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in outputs]


class OpenVinoRunner:
    """One OpenVINO model compiled for the CPU (float32 inference, one stream, ``threads`` threads); each calling
    thread has its own infer request (a request is not safe to share)."""

    def __init__(self, path: Path, key: ExportKey, threads: int) -> None:
        ov = import_openvino()
        config = {"INFERENCE_NUM_THREADS": max(1, threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names, self.layers = output_names(key), key.layers
        self.path = path
        self._local = threading.local()

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(_feed(inputs, self.input_names))
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [torch.from_numpy(np.array(by_name[name], dtype=np.float32)) for name in self.output_names]
