"""A cross-encoder used as an embedder: the hidden states of an EARLY layer, text paired with
itself (``[CLS] t [SEP] t [SEP]``), mean-pooled over real tokens (arXiv 2502.03552).

The model is cut to the deepest layer needed, so later layers are never computed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ceindex.errors import ConfigError, ModelError
from ceindex.models.base import EncoderDescription
from ceindex.models.config import INPUT_MODES, EncoderConfig
from ceindex.models.embedder import Embedder, PoolingSpec
from ceindex.models.runners import RuntimeSpec, torch_placement
from ceindex.models.runtime import (
    effective_max_length,
    load_pretrained,
    local_model_dir,
    prepare_model,
    tokenizer_sha256,
    weights_sha256,
)

log = logging.getLogger(__name__)

# Where the families keep their transformer blocks (BERT/RoBERTa/XLM-R/ELECTRA/DeBERTa: encoder.layer).
LAYER_STACK_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer", "h", "block")


def find_layer_stack(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(parent module, attribute name, ModuleList) of the model's transformer blocks."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for path in LAYER_STACK_PATHS:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            continue
        stack = getattr(parent, attr, None)
        if isinstance(stack, torch.nn.ModuleList) and (depth is None or len(stack) == depth):
            return parent, attr, stack
    # Fallback: the only ModuleList whose length is the configured depth.
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and depth is not None and len(module) == depth
    ]
    if len(found) == 1:
        name, stack = found[0]
        parent_path, _, attr = name.rpartition(".")
        return (model.get_submodule(parent_path) if parent_path else model), attr, stack  # type: ignore[return-value]
    raise ModelError(
        f"cannot find the transformer layer stack of {type(model).__name__} "
        f"(looked for {', '.join(LAYER_STACK_PATHS)}); this architecture is not supported as a ce-layer encoder"
    )


def cut_to_depth(model: torch.nn.Module, depth: int) -> torch.nn.Module:
    """Keep only the first ``depth`` transformer layers (0 = embeddings only), in place."""
    parent, attr, stack = find_layer_stack(model)
    setattr(parent, attr, torch.nn.ModuleList(list(stack)[:depth]))
    model.config.num_hidden_layers = depth
    if getattr(model, "pooler", None) is not None:  # the pooler reads the last layer: never needed here
        model.pooler = None
    return model


def _load_base(ref: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    def load(path: str):
        model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler")]
        if missing:
            log.warning("%s: %d weights missing from the checkpoint (randomly initialised), e.g. %s",
                        ref, len(missing), ", ".join(sorted(missing)[:3]))
        return model, AutoTokenizer.from_pretrained(path)

    return load_pretrained(ref, "ce-layer", load, "cross-encoder")


class CrossEncoderLayers:
    """Pooled hidden states of several layers of one cross-encoder, from ONE forward pass.

    The model is cut to ``max(layers)``; ``encode_layers`` returns ``{layer: (n, dims) float32}``.
    """

    def __init__(
        self,
        model: str,
        layers: Sequence[int],
        *,
        input_mode: str = "self-pair",
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 32,
        device: str = "auto",
        dtype: str = "float32",
        runtime: str = "torch",
        export_root: Path | None = None,
    ) -> None:
        if not layers:
            raise ConfigError("at least one layer is needed")
        if min(layers) < 0:
            raise ConfigError(f"layers must be >= 0 (0 = embedding output); got {sorted(layers)}")
        if input_mode not in INPUT_MODES:
            raise ConfigError(f"input mode must be self-pair or single; got {input_mode!r}")
        self.model_ref, self.layers = model, sorted(set(layers))
        self.input_mode, self.pooling, self.dtype, self.runtime = input_mode, pooling, dtype, runtime
        torch_dtype, device_ = torch_placement(runtime, dtype, device)
        hf_model, tokenizer = _load_base(model)
        self._tokenizer_sha = tokenizer_sha256(local_model_dir(model))  # hashed as loaded, once
        self.full_depth = len(find_layer_stack(hf_model)[2])
        depth = max(self.layers)
        if depth > self.full_depth:
            raise ModelError(
                f"layer {depth} is beyond the depth of {model!r}: it has {self.full_depth} transformer layers "
                f"(valid layers 0..{self.full_depth}, 0 = embedding output)"
            )
        self.model_type = str(getattr(hf_model.config, "model_type", "unknown"))
        self.dims = int(hf_model.config.hidden_size)
        hf_model = prepare_model(cut_to_depth(hf_model, depth), torch_dtype, device_)
        self.max_length = effective_max_length(max_length, hf_model, tokenizer)
        spec = PoolingSpec(self_pair=input_mode == "self-pair", pooling=pooling, include_special=False)
        self._embedder = Embedder(
            hf_model, tokenizer, spec, max_length=self.max_length, batch_size=batch_size, device=device_,
            depth=depth, stack_owner=find_layer_stack(hf_model)[0],
            runtime=RuntimeSpec(runtime, dtype, local_model_dir(model), export_root, "hidden", tuple(self.layers)),
        )
        self._sha: str | None = None
        log.info("loaded %s (%s, %d layers) cut to %d layer(s) on %s, %s, runtime %s",
                 model, self.model_type, self.full_depth, depth, device_, dtype, runtime)

    @property
    def model(self) -> torch.nn.Module:
        return self._embedder.model

    @property
    def fallback_batches(self) -> int:
        """Batches tokenised by the tokenizer itself because the input assembler could not mirror it."""
        return self._embedder.fallback_batches

    def encode_layers(
        self, texts: Sequence[str], *, show_progress: bool = False, desc: str = "encode"
    ) -> dict[int, np.ndarray]:
        return self._embedder.embed(texts, self.layers, show_progress=show_progress, desc=desc)

    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = weights_sha256(local_model_dir(self.model_ref))
        return self._sha

    def describe(self, layer: int) -> EncoderDescription:
        return EncoderDescription(
            kind="ce-layer",
            model=self.model_ref,
            weights_sha256=self.weights_sha256(),
            dims=self.dims,
            layer=layer,
            input_mode=self.input_mode,
            pooling=self.pooling,
            max_length=self.max_length,
            normalized=True,
            dtype=self.dtype,
            tokenizer_sha256=self._tokenizer_sha,
            runtime=self.runtime,
            extra={"model_type": self.model_type, "model_depth": self.full_depth},
        )


class CELayerEncoder:
    """The ``Encoder`` for one layer of a cross-encoder (see module docstring)."""

    def __init__(self, config: EncoderConfig, export_root: Path | None = None) -> None:
        if config.kind != "ce-layer":
            raise ConfigError(f"CELayerEncoder needs kind 'ce-layer', got {config.kind!r}")
        self.config = config
        self.layer = config.layer
        self._layers = CrossEncoderLayers(
            config.resolved_model,
            [config.layer],
            input_mode=config.input_mode,
            pooling=config.pooling,
            max_length=config.max_length,
            batch_size=config.batch_size,
            device=config.device,
            dtype=config.dtype,
            runtime=config.runtime,
            export_root=export_root,
        )

    @property
    def dims(self) -> int:
        return self._layers.dims

    @property
    def model(self) -> torch.nn.Module:
        return self._layers.model

    @property
    def fallback_batches(self) -> int:
        """Batches tokenised by the tokenizer itself because the input assembler could not mirror it."""
        return self._layers.fallback_batches

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._layers.encode_layers(texts, show_progress=show_progress)[self.layer]

    def describe(self) -> EncoderDescription:
        return self._layers.describe(self.layer)

