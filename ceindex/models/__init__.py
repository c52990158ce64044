"""The model core: encoders (text -> unit-length float32 vectors) and the cross-encoder scorer.

Encoders: ``ce-layer``, an early layer of a cross-encoder (the text paired with itself, mean-pooled);
``dual``, a sentence-transformers dual encoder. Build either from an ``EncoderConfig``.
The full cross-encoder that scores (query, document) pairs is ``ceindex.models.scorer.CrossEncoderReranker``.
Modules: ``base`` (the Encoder protocol), ``config``, ``runtime`` (device/dtype, batching, pooling, loading),
``assemble`` (model inputs from cached token ids), ``embedder``, ``ce_layer``, ``dual``, ``scorer``,
``runners`` (torch, ONNX Runtime or OpenVINO runs the forward pass) and ``exports`` (their cached exports).
This package imports nothing above ``ceindex.errors`` (see ARCHITECTURE.md).
"""
from __future__ import annotations

from pathlib import Path

from ceindex.errors import ConfigError
from ceindex.models.base import Encoder, EncoderDescription
from ceindex.models.config import EncoderConfig, parse_encoder_spec

__all__ = [
    "Encoder",
    "EncoderConfig",
    "EncoderDescription",
    "encoder_config_from_description",
    "load_encoder",
    "parse_encoder_spec",
]


def load_encoder(config: EncoderConfig, export_root: Path | None = None) -> Encoder:
    """Load the encoder ``config`` describes (heavy imports happen here, not at package import).

    ``export_root``: where --runtime onnx/openvino exports are cached (None = ``$CEINDEX_HOME/cache/exports``)."""
    if config.kind == "ce-layer":
        from ceindex.models.ce_layer import CELayerEncoder

        return CELayerEncoder(config, export_root=export_root)
    if config.kind == "dual":
        from ceindex.models.dual import DualEncoder

        return DualEncoder(config, export_root=export_root)
    raise ConfigError(f"unknown encoder kind {config.kind!r}")


def encoder_config_from_description(
    desc: EncoderDescription, batch_size: int = 32, device: str = "auto", dtype: str | None = None,
    runtime: str | None = None,
) -> EncoderConfig:
    """The config that rebuilds the encoder an index recorded (e.g. to encode its queries).

    ``dtype`` and ``runtime`` default to the recorded ones; batch size and device do not change vectors.
    """
    return EncoderConfig(
        kind=desc.kind,
        model=desc.model,
        layer=desc.layer if desc.layer is not None else EncoderConfig.layer,
        input_mode=desc.input_mode or EncoderConfig.input_mode,
        pooling=desc.pooling,
        max_length=desc.max_length,
        batch_size=batch_size,
        device=device,
        dtype=dtype or desc.dtype,
        runtime=runtime or desc.runtime,
    )
