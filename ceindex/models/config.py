"""Encoder configuration and the compact ``--encoder`` spec syntax.

Each field's metadata holds its CLI flag, help text and (where the value is one of a list) its choices, as plain
data: ``ceindex.config`` documents them and ``ceindex.commands`` turns them into options; this layer imports
neither.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ceindex.errors import ConfigError

ENCODER_KINDS = ("ce-layer", "dual")
INPUT_MODES = ("self-pair", "single")
POOLINGS = ("mean", "mean-first-copy", "cls")
DTYPES = ("float32", "bfloat16", "int8")
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("torch", "onnx", "openvino")

# Defaults are Hugging Face hub ids (a user's machine has the hub); the environment
# variables point them at local folders on machines without it.
DEFAULT_CE_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
DEFAULT_DE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CE_MODEL_ENV = "CEINDEX_CE_MODEL"
DE_MODEL_ENV = "CEINDEX_DE_MODEL"


def setting(default: Any, flag: str, help: str, choices: tuple[str, ...] | None = None,
            metavar: str | None = None) -> Any:
    """A settings field whose metadata names its CLI flag, help text, and choices (if the value is one of a list)."""
    metadata: dict[str, Any] = {"flag": flag, "help": help}
    if choices is not None:
        metadata["choices"] = choices
    if metavar is not None:
        metadata["metavar"] = metavar
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_ce_model() -> str:
    return os.environ.get(CE_MODEL_ENV) or DEFAULT_CE_MODEL


def default_de_model() -> str:
    return os.environ.get(DE_MODEL_ENV) or DEFAULT_DE_MODEL


@dataclass(frozen=True)
class EncoderConfig:
    """How to embed texts. ``model=None`` means the default model for ``kind``."""

    kind: str = setting("ce-layer", "--encoder-kind", "ce-layer (early layer of a cross-encoder) or dual (a dual encoder).",
                        ENCODER_KINDS)
    model: str | None = setting(None, "--encoder-model",
                                "Hub id or local folder (default: $CEINDEX_CE_MODEL / $CEINDEX_DE_MODEL or a hub id).")
    layer: int = setting(1, "--layer", "Cross-encoder layer to embed with (0 = embeddings, 1 = first transformer layer).")
    input_mode: str = setting("self-pair", "--input-mode", "self-pair ([CLS] t [SEP] t [SEP], as in the paper) or single.",
                              INPUT_MODES)
    pooling: str = setting("mean", "--pooling", "mean (real tokens), mean-first-copy, or cls.", POOLINGS)
    max_length: int = setting(256, "--max-length", "Max tokens per text (self-pair counts both copies).")
    batch_size: int = setting(32, "--batch-size", "Texts per encoder batch.")
    device: str = setting("auto", "--device", "auto, cpu or cuda.", DEVICES)
    dtype: str = setting("float32", "--dtype", "float32, bfloat16, or int8 (CPU dynamic quantisation).", DTYPES)
    runtime: str = setting("torch", "--runtime", "What runs the model: torch, onnx (ONNX Runtime) or openvino; onnx and openvino run an export cached under the home folder, on the CPU, in float32 or int8 (the runtime's own dynamic int8).", RUNTIMES)

    def __post_init__(self) -> None:
        for f in fields(self):
            if "choices" in f.metadata:
                _check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if self.layer < 0:
            raise ConfigError(f"encoder layer must be >= 0 (0 = embedding output), got {self.layer}")
        if self.max_length < 8:
            raise ConfigError(f"encoder max_length must be >= 8, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"encoder batch_size must be >= 1, got {self.batch_size}")
        if self.runtime != "torch" and self.dtype == "bfloat16":
            raise ConfigError(f"dtype bfloat16 runs on --runtime torch only; runtime {self.runtime} takes float32 or int8")

    @property
    def resolved_model(self) -> str:
        if self.model:
            return self.model
        return default_ce_model() if self.kind == "ce-layer" else default_de_model()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"encoder {name} must be one of {', '.join(choices)}; got {value!r}")


_KIND_ALIASES = {"ce": "ce-layer", "ce-layer": "ce-layer", "de": "dual", "dual": "dual"}
_KEY_ALIASES = {"input": "input_mode", "mode": "input_mode"}


def parse_encoder_spec(spec: str, base: EncoderConfig | None = None) -> EncoderConfig:
    """Parse ``KIND[:MODEL][,key=value...]``.

    Examples: ``ce:cross-encoder/ms-marco-MiniLM-L-6-v2,layer=1``, ``ce,layer=2,pooling=cls``,
    ``de:./models/de2ce``. KIND is ``ce`` (early-layer cross-encoder) or ``de`` (dual encoder).
    """
    if not spec or not spec.strip():
        raise ConfigError("empty --encoder spec; expected e.g. 'ce:MODEL,layer=1' or 'de:MODEL'")
    head, *options = [p.strip() for p in spec.split(",")]
    kind_part, _, model = head.partition(":")
    kind = _KIND_ALIASES.get(kind_part.strip().lower())
    if kind is None:
        raise ConfigError(
            f"--encoder {spec!r}: kind {kind_part!r} is not one of ce, ce-layer, de, dual "
            "(format KIND[:MODEL][,key=value...])"
        )
    values: dict[str, object] = {"kind": kind, "model": model.strip() or None}
    int_keys = {f.name for f in fields(EncoderConfig) if f.type in ("int", int)}
    for option in options:
        key, sep, value = option.partition("=")
        key = _KEY_ALIASES.get(key.strip(), key.strip().replace("-", "_"))
        if not sep or key not in {f.name for f in fields(EncoderConfig)} or key in ("kind", "model"):
            raise ConfigError(f"--encoder {spec!r}: option {option!r} is not key=value with a known key")
        values[key] = _to_int(spec, key, value) if key in int_keys else value.strip()
    return replace(base or EncoderConfig(), **values)  # type: ignore[arg-type]


def _to_int(spec: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--encoder {spec!r}: {key} must be an integer, got {value!r}") from None
