"""The encoder interface shared by the indexer and the search pipeline."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EncoderDescription:
    """What an index records about the encoder that made its vectors.

    Two descriptions are *compatible* when every field that changes the vectors is equal;
    batch size or device do not change vectors and are therefore not part of it.
    """

    kind: str  # "ce-layer" or "dual"
    model: str  # hub id or local path as given
    weights_sha256: str  # hash of the weight files actually loaded
    dims: int
    layer: int | None = None  # ce-layer only
    input_mode: str | None = None  # "self-pair" | "single" (ce-layer only)
    pooling: str = "mean"
    max_length: int = 256
    normalized: bool = True
    dtype: str = "float32"
    tokenizer_sha256: str | None = None  # hash of the tokenizer files (None in indexes built before it was recorded)
    runtime: str = "torch"  # what ran the model: torch, onnx or openvino (indexes built before it was recorded: torch)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderDescription":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def compatibility_key(self) -> dict[str, Any]:
        """Fields that must match between the index and the query encoder."""
        return {
            "kind": self.kind,
            "weights_sha256": self.weights_sha256,
            "dims": self.dims,
            "layer": self.layer,
            "input_mode": self.input_mode,
            "pooling": self.pooling,
            "normalized": self.normalized,
        }

    def build_key(self) -> dict[str, Any]:
        """Everything that changes a document's vector: one build never mixes two of these."""
        return self.compatibility_key() | {
            "max_length": self.max_length, "dtype": self.dtype, "tokenizer_sha256": self.tokenizer_sha256,
            "runtime": self.runtime}

    def differences(self, other: "EncoderDescription") -> dict[str, tuple[Any, Any]]:
        diffs = _diff(self.compatibility_key(), other.compatibility_key())
        if self.tokenizer_sha256 and other.tokenizer_sha256 and self.tokenizer_sha256 != other.tokenizer_sha256:
            diffs["tokenizer_sha256"] = (self.tokenizer_sha256, other.tokenizer_sha256)
        return diffs

    def build_differences(self, other: "EncoderDescription") -> dict[str, tuple[Any, Any]]:
        return _diff(self.build_key(), other.build_key())


def _diff(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors, in batches."""

    @property
    def dims(self) -> int: ...

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Return an array of shape (len(texts), dims), dtype float32, rows of unit length."""
        ...

    def describe(self) -> EncoderDescription: ...
