"""The one place texts become pooled hidden states: tokenise, batch by length, run the model
once, pool any number of layers, restore input order. Used by both encoder kinds."""
from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ceindex.errors import ConfigError
from ceindex.models.assemble import InputAssembler
from ceindex.models.runners import RuntimeSpec, open_runner
from ceindex.models.runtime import SerialTokenizer, check_texts, l2_normalize, length_sorted_batches, masked_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolingSpec:
    """How a text is fed and pooled.

    ``self_pair``: feed ``[CLS] t [SEP] t [SEP]`` instead of ``[CLS] t [SEP]``.
    ``pooling``: ``mean`` (all content tokens), ``mean-first-copy`` (first copy only), ``cls``.
    ``include_special``: count [CLS]/[SEP] in the mean (sentence-transformers does; the CE path does not).
    """

    self_pair: bool
    pooling: str = "mean"
    include_special: bool = False

    def __post_init__(self) -> None:
        if self.pooling == "mean-first-copy" and not self.self_pair:
            raise ConfigError("pooling 'mean-first-copy' needs input mode 'self-pair' (there is only one copy)")


class Embedder:
    """Runs a (possibly truncated) transformer and pools selected hidden-state layers.

    Safe to call from several threads at once (the search server and the Python API do): the tokenizer is
    called under a lock and the forward pass keeps no per-call state on shared modules.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,  # a transformers tokenizer
        spec: PoolingSpec,
        *,
        max_length: int,
        batch_size: int,
        device: torch.device,
        depth: int,
        stack_owner: torch.nn.Module | None = None,
        runtime: RuntimeSpec | None = None,
    ) -> None:
        """``stack_owner``: the module whose forward runs the layer stack (e.g. ``model.encoder``); at
        depth 0 its input IS the embedding output, captured without running it (some families, such as
        DeBERTa-v2, cannot run an encoder with zero layers). ``runtime``: run an ONNX Runtime / OpenVINO export
        of ``model`` (its ``layers``) instead of the module (None or torch: the module)."""
        if spec.pooling == "mean-first-copy" and not tokenizer.is_fast:
            raise ConfigError("pooling 'mean-first-copy' needs a fast (Rust) tokenizer to find the first copy")
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.max_length, self.batch_size, self.device, self.depth = max_length, batch_size, device, depth
        self.stack_owner = stack_owner if stack_owner is not model else None
        self._tokenize_call = SerialTokenizer(tokenizer)
        self._capture = _EmbeddingCapture(self.stack_owner) if depth == 0 and self.stack_owner is not None else None
        self._n_special = tokenizer.num_special_tokens_to_add(pair=spec.self_pair)
        self._assembler = InputAssembler.for_tokenizer(tokenizer, pair=spec.self_pair, warn=True)
        self.fallback_batches = 0  # batches whose inputs the tokenizer made (no assembler): the slower path
        self._fallback_lock = threading.Lock()
        # RoBERTa-like models have a single token type (DistilBERT none): never feed segment ids to them.
        types = getattr(model.config, "type_vocab_size", 2) or 0
        takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
        self._input_names = {"input_ids", "attention_mask"} | ({"token_type_ids"} if types >= 2 and takes_types else set())
        # ...and only what the tokenizer itself would return (the assembler always builds segment ids)
        self._input_names &= {"input_ids", "attention_mask"} | set(getattr(tokenizer, "model_input_names", ()))
        self._runner = None if runtime is None else open_runner(
            model, runtime, sorted(self._input_names),
            lambda inputs: [self._torch_forward(inputs, runtime.layers)[layer] for layer in runtime.layers])

    # ------------------------------------------------------------------ public
    def embed(
        self, texts: Sequence[str], layers: Sequence[int], *, show_progress: bool = False, desc: str = "encode"
    ) -> dict[int, np.ndarray]:
        """Unit-length float32 vectors of ``texts`` for each index of ``layers`` into hidden_states
        (0 = embedding output, ``depth`` = last layer of this model), from ONE forward pass per batch."""
        texts = check_texts(texts)
        bad = [layer for layer in layers if not 0 <= layer <= self.depth]
        if bad:
            raise ConfigError(f"layers {bad} are outside 0..{self.depth} of this (cut) model")
        token_ids = self._token_ids(texts)
        lengths = [len(ids) for ids in token_ids]
        dims = int(self.model.config.hidden_size)
        out = {layer: np.zeros((len(texts), dims), dtype=np.float32) for layer in layers}
        batches = length_sorted_batches(lengths, self.batch_size)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress) as bar:
            for batch in batches:
                pooled = self._embed_batch([texts[i] for i in batch], [token_ids[i] for i in batch], layers)
                for layer, vectors in pooled.items():
                    out[layer][batch] = vectors
                bar.update(len(batch))
        self._log_truncation(lengths)
        return {layer: l2_normalize(vectors) for layer, vectors in out.items()}

    # ------------------------------------------------------------------ internals
    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        return self._tokenize_call(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def _log_truncation(self, lengths: list[int]) -> None:
        copies = 2 if self.spec.self_pair else 1
        truncated = sum(1 for n in lengths if copies * n + self._n_special > self.max_length)
        level = logging.INFO if truncated else logging.DEBUG
        log.log(
            level,
            "encoded %d texts; %d (%.1f%%) truncated to max_length=%d tokens%s",
            len(lengths), truncated, 100.0 * truncated / max(len(lengths), 1), self.max_length,
            " (self-pair: both copies cut equally)" if self.spec.self_pair and truncated else "",
        )

    def _tokenize(self, texts: list[str]):
        return self._tokenize_call(
            texts,
            texts if self.spec.self_pair else None,
            truncation="longest_first",
            max_length=self.max_length,
            padding=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )

    def _pool_mask(self, enc) -> torch.Tensor:
        attention = enc["attention_mask"]
        if self.spec.pooling == "cls":
            mask = torch.zeros_like(attention)
            mask[:, 0] = 1
            return mask
        if self.spec.pooling == "mean-first-copy" and "first_copy_mask" in enc:
            mask = enc["first_copy_mask"] * attention
        elif self.spec.pooling == "mean-first-copy":
            rows = [[1 if s == 0 else 0 for s in enc.sequence_ids(i)] for i in range(attention.shape[0])]
            mask = torch.tensor(rows, dtype=attention.dtype) * attention
        elif self.spec.include_special:
            mask = attention
        else:
            mask = attention * (1 - enc["special_tokens_mask"])
        empty = mask.sum(dim=1) == 0  # a text whose tokens are all special: fall back to every real token
        return torch.where(empty.unsqueeze(1), attention, mask)

    def batch_inputs(
        self, texts: list[str], token_ids: Sequence[Sequence[int]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs and the pooling mask of one batch, on the device (``token_ids``: from ``_token_ids``)."""
        if self._assembler is not None:
            enc = self._assembler(token_ids, self.max_length)
        else:
            enc = self._tokenize(texts)
            with self._fallback_lock:
                self.fallback_batches += 1
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in self._input_names}
        return inputs, self._pool_mask(enc).to(self.device)

    @torch.inference_mode()
    def _embed_batch(
        self, texts: list[str], token_ids: Sequence[Sequence[int]], layers: Sequence[int]
    ) -> dict[int, np.ndarray]:
        inputs, mask = self.batch_inputs(texts, token_ids)
        return {layer: masked_mean(states, mask).cpu().numpy() for layer, states in self._forward(inputs, layers).items()}

    def _forward(self, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        if self._runner is not None:
            exported = dict(zip(self._runner.layers, self._runner(inputs)))
            return {layer: exported[layer] for layer in layers}
        return self._torch_forward(inputs, layers)

    def _torch_forward(self, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        if self._capture is not None:
            return {0: self._capture.run(self.model, inputs)}
        if list(layers) == [self.depth]:
            return {self.depth: self.model(**inputs).last_hidden_state}
        hidden_states = self.model(**inputs, output_hidden_states=True).hidden_states
        return {layer: hidden_states[layer] for layer in layers}


class _EmbeddingCapture:
    """The embedding output of a model cut to depth 0, without running its (empty) layer stack.

    Some families (DeBERTa-v2) cannot run an encoder with zero layers, so a forward pre-hook on the stack's owner
    takes its input and ends the pass. The hook is registered ONCE and acts only for the thread that asked:
    registering one per call on a shared module let concurrent calls capture each other's tensors.
    """

    def __init__(self, stack_owner: torch.nn.Module) -> None:
        self._local = threading.local()
        stack_owner.register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured = getattr(self._local, "captured", None)
        if captured is not None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

    def run(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self._local.captured = captured = []
        try:
            model(**inputs)
        except _Stop:
            pass
        finally:
            self._local.captured = None
        if not captured:
            raise RuntimeError("the embedding output was not captured (the layer stack never ran)")
        return captured[0]


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the wanted tensor is captured."""
