"""Shared plumbing for the transformer encoders: input checks, device/dtype, batching,
pooling, weight hashing and loading models with actionable errors."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from ceindex.errors import ConfigError, InputError, ModelError

log = logging.getLogger(__name__)

T = TypeVar("T")

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


# --------------------------------------------------------------------------- inputs
def check_texts(texts: Sequence[Any]) -> list[str]:
    """Return ``texts`` as a list, or raise InputError naming the first bad index."""
    if isinstance(texts, str):
        raise InputError("encode() expects a sequence of texts, got a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InputError(f"text at index {i} is {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"text at index {i} is empty (or only whitespace); every text must have content")
    return out


class SerialTokenizer:
    """Calls a tokenizer one thread at a time.

    A fast (Rust) tokenizer keeps its truncation/padding settings as mutable state that each call may reset;
    two threads calling it at once fail with "Already borrowed". Tokenising is a small share of an encode,
    so serialising it costs little and makes every encoder safe to share between threads.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.tokenizer(*args, **kwargs)


# --------------------------------------------------------------------------- device / dtype
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda; got {device!r}")
    return torch.device(device)


def prepare_model(model: torch.nn.Module, dtype: str, device: torch.device) -> torch.nn.Module:
    """Move ``model`` to ``device`` in ``dtype`` (int8 = dynamic quantisation of Linear layers, CPU only)."""
    model.eval()
    if dtype == "float32":
        return model.to(device=device, dtype=torch.float32)
    if dtype == "bfloat16":
        return model.to(device=device, dtype=torch.bfloat16)
    if dtype == "int8":
        if device.type != "cpu":
            raise ConfigError("dtype int8 (dynamic quantisation) runs on the CPU only; use --device cpu")
        model = model.to(device=device, dtype=torch.float32)
        with contextlib.suppress(Exception), _quiet_warnings():
            torch.backends.quantized.engine = _quant_engine()
        with _quiet_warnings():
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    raise ConfigError(f"dtype must be float32, bfloat16 or int8; got {dtype!r}")


def _quant_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("fbgemm", "x86", "qnnpack"):
        if name in engines:
            return name
    return torch.backends.quantized.engine


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- batching / pooling
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (b, t, d) over positions where ``mask`` (b, t) is 1, in float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1.0)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def position_limit(model: torch.nn.Module) -> int | None:
    """The longest input the model's position embeddings allow (None when its config does not say)."""
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if not positions:
        return None
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        return positions - 2  # position ids start after the padding index
    return positions


def effective_max_length(requested: int, model: torch.nn.Module, tokenizer: Any) -> int:
    """``requested``, capped at what the model's position embeddings allow."""
    limit = position_limit(model) or requested
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    if requested > limit:
        log.warning("max_length %d exceeds what the model accepts; using %d", requested, limit)
        return limit
    return requested


DEFAULT_PAIR_MAX_LENGTH = 256  # a (query, document) pair's token limit when the model's files do not say


def training_max_length(model: torch.nn.Module, tokenizer: Any) -> tuple[int | None, str]:
    """The input length a model was trained at, as its own files record it, and where that came from.

    In order: sentence-transformers' ``sentence_bert_config.json`` ``max_seq_length``; the tokenizer's
    ``model_max_length`` when it is below the position limit (sentence-transformers' CrossEncoder saves its
    ``max_length`` there; a value equal to the positions only says what the architecture allows); the tokenizer's
    saved truncation ``max_length`` (what ``tokenizer(..., max_length=N)`` during training leaves in
    tokenizer_config.json). ``(None, reason)`` when none of them says.
    """
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            value = None
        if _is_length(value):
            return int(value), "sentence_bert_config.json max_seq_length"
    limit = position_limit(model)
    model_max = getattr(tokenizer, "model_max_length", None)
    if _is_length(model_max) and (limit is None or model_max < limit):
        return int(model_max), "tokenizer model_max_length"
    saved = (getattr(tokenizer, "init_kwargs", None) or {}).get("max_length")
    if _is_length(saved):
        return int(saved), "tokenizer_config.json max_length"
    return None, "the model's files record no training length"


def _is_length(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000


def pair_max_length(requested: int | None, model: torch.nn.Module, tokenizer: Any) -> tuple[int, str]:
    """The pair length to run at: ``requested``, else the model's training length, else
    :data:`DEFAULT_PAIR_MAX_LENGTH`; always capped by :func:`effective_max_length`. Returns (length, why)."""
    if requested is not None:
        return effective_max_length(requested, model, tokenizer), "set"
    trained, source = training_max_length(model, tokenizer)
    if trained is None:
        return effective_max_length(DEFAULT_PAIR_MAX_LENGTH, model, tokenizer), f"default ({source})"
    return effective_max_length(trained, model, tokenizer), f"the model's training length ({source})"


# --------------------------------------------------------------------------- loading
def looks_like_path(ref: str) -> bool:
    """A model reference is a local path if it exists or is written like one (/, ., ~, or 3+ parts)."""
    return Path(ref).expanduser().exists() or ref.startswith(("/", ".", "~")) or ref.count("/") > 1


def hub_error(ref: str, kind: str, cause: BaseException) -> ModelError:
    env, prefix = ("CEINDEX_CE_MODEL", "ce") if kind == "ce-layer" else ("CEINDEX_DE_MODEL", "de")
    return ModelError(
        f"model {ref!r} could not be downloaded from the Hugging Face hub "
        f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no details'}). "
        f"Without hub access, point ceindex at a local model folder: set {env}=/path/to/model "
        f"or pass --encoder {prefix}:/path/to/model."
    )


def load_pretrained(ref: str, kind: str, loader: Callable[[str], T], what: str) -> T:
    """Call ``loader(path_or_id)`` and turn its failures into ModelError with a way out."""
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelError(f"model folder {str(path)!r} does not exist (or is not a folder)")
        try:
            with _quiet_transformers():
                return loader(str(path))
        except Exception as exc:  # noqa: BLE001 - any loader failure is a model problem
            raise ModelError(f"cannot load the {what} from {str(path)!r}: {exc}") from exc
    cached = _cached_snapshot(ref)
    if cached is not None:
        try:
            with _quiet_transformers():
                return loader(cached)
        except Exception as exc:  # noqa: BLE001 - an incomplete cache (e.g. only the tokenizer): ask the hub
            log.debug("the cached snapshot of %s is incomplete (%s); asking the hub", ref, exc)
    try:
        _check_hub_answers(ref)
        with _quiet_transformers():
            return loader(ref)
    except Exception as exc:  # noqa: BLE001 - hub ids fail in many ways (HTTP, offline, 404)
        raise hub_error(ref, kind, exc) from exc


def _cached_snapshot(ref: str) -> str | None:
    """The folder of hub id ``ref``'s cached snapshot, or None (loading from it needs no network at all)."""
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(ref, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached
        return None


def _check_hub_answers(ref: str) -> None:
    """One quick request: without a hub, the hub client's own metadata requests back off and retry for about
    30 s per file before failing; this one fails at once."""
    import huggingface_hub
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        huggingface_hub.model_info(ref, timeout=10)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence "weights not used / newly initialised" notes: a CE's head is dropped on purpose."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def local_model_dir(ref: str) -> Path:
    """The folder holding the files of ``ref`` (a local path, or a hub id already in the cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, local_files_only=True))


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the weight files of ``model_dir`` (sorted by name, streamed).

    Cached per path (and file sizes/mtimes, so a replaced checkpoint is hashed again)."""
    root = Path(model_dir).resolve()
    files = sorted(root.glob(WEIGHT_GLOBS[0])) or sorted(root.glob(WEIGHT_GLOBS[1]))
    if not files:
        raise ModelError(f"no weight files (*.safetensors or pytorch_model*.bin) in {str(root)!r}")
    return _sha256_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "*.model")


def tokenizer_sha256(*model_dirs: Path) -> str:
    """sha256 over the tokenizer files in ``model_dirs`` (a changed vocabulary or casing changes the vectors)."""
    files = sorted({f.resolve() for d in model_dirs for pattern in TOKENIZER_FILES for f in Path(d).glob(pattern)})
    return _sha256_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=32)
def _sha256_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in files:
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
