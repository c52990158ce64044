"""Build the student: a shallow dual encoder whose embeddings and first layers are COPIED from a source.

The source is a cross-encoder (its base model: the classification head is dropped) or, for the
control experiment, a dual encoder. Copying is explicit: embeddings and every other parameter outside
the transformer layer stack are copied by name, layers ``0..copy-1`` are copied one by one, the rest
keep the architecture's own (seeded) random initialisation. ``save_student`` writes a
sentence-transformers folder that ``ceindex.models.dual.DualEncoder`` loads unchanged.
"""
from __future__ import annotations

import copy as copy_module
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ceindex.distill.config import StudentConfig
from ceindex.errors import ModelError
from ceindex.models.ce_layer import find_layer_stack
from ceindex.models.runtime import load_pretrained, weights_sha256

log = logging.getLogger(__name__)

POOLING_CONFIG = {
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
    "pooling_mode_weightedmean_tokens": False,
    "pooling_mode_lasttoken": False,
    "include_prompt": True,
}
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


@dataclass
class StudentInfo:
    """Where the student's weights came from (written into ``ceindex_distill.json``)."""

    source: str
    source_kind: str  # "cross-encoder" | "dual-encoder"
    source_weights_sha256: str
    source_layers: int
    model_type: str
    layers: int
    copied_layers: list[int]
    random_layers: list[int]
    copied_other: list[str] = field(default_factory=list)  # parameters outside the layer stack (embeddings...)
    random_other: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Source:
    path: Path  # folder with config.json + weights
    kind: str


def resolve_source(ref: str) -> _Source:
    """A local model folder: a sentence-transformers folder (dual encoder) or a plain HF model (cross-encoder)."""
    root = Path(ref).expanduser()
    if not root.is_dir():
        raise ModelError(
            f"model folder {ref!r} does not exist (or is not a folder); give the path of a cross-encoder "
            "(config.json + model.safetensors) or, for --init-from, of a sentence-transformers model; hub ids are "
            "not accepted here: download the model to a folder first"
        )
    modules_file = root / "modules.json"
    if modules_file.is_file():
        from ceindex.models.dual import read_st_settings

        sub = read_st_settings(root)["subfolder"]
        path = root / sub if sub else root
        kind = "dual-encoder"
    else:
        path, kind = root, "cross-encoder"
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face transformer model folder")
    return _Source(path=path.resolve(), kind=kind)


def load_source(ref: str) -> tuple[torch.nn.Module, Any, _Source]:
    """The source's base transformer (float32, no task head) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_source(ref)

    def load(path: str) -> tuple[torch.nn.Module, Any]:
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    model, tokenizer = load_pretrained(str(source.path), "ce-layer", load, source.kind)
    return model.float().eval(), tokenizer, source


def _stack_prefix(model: torch.nn.Module, stack: torch.nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is stack:
            return name
    raise ModelError(f"layer stack of {type(model).__name__} not found among its modules")


def build_student(config: StudentConfig, seed: int = 42) -> tuple[torch.nn.Module, Any, StudentInfo]:
    """The student model (float32, train-ready), its tokenizer, and what was copied."""
    from transformers import AutoModel

    source_model, tokenizer, source = load_source(config.source)
    _, _, source_stack = find_layer_stack(source_model)
    depth = len(source_stack)
    if config.copy > depth:
        raise ModelError(
            f"--copy {config.copy} is beyond the depth of {config.source}: it has {depth} transformer layers; "
            f"use --copy <= {depth}"
        )
    student_config = copy_module.deepcopy(source_model.config)
    student_config.num_hidden_layers = config.layers
    torch.manual_seed(seed)
    student = AutoModel.from_config(student_config).float()
    _, _, student_stack = find_layer_stack(student)
    prefix = _stack_prefix(student, student_stack) + "."
    source_state = source_model.state_dict()
    copied_other, random_other = [], []
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            if name.startswith(prefix) or config.random_init:
                continue
            theirs = source_state.get(name)
            if theirs is not None and theirs.shape == tensor.shape:
                tensor.copy_(theirs)
                copied_other.append(name)
            else:
                random_other.append(name)
        for i in range(config.copy):
            student_stack[i].load_state_dict(source_stack[i].state_dict())
    if not config.random_init and not any("embed" in name for name in copied_other):
        raise ModelError(f"no embedding weights of {config.source} matched the student's; cannot copy them")
    if config.random_init:
        random_other = [name for name in student.state_dict() if not name.startswith(prefix)]
    elif random_other:
        log.info("left at random init (not in the source): %s", ", ".join(random_other))
    info = StudentInfo(
        source=str(Path(config.source).expanduser().resolve()),
        source_kind=source.kind,
        source_weights_sha256=weights_sha256(source.path),
        source_layers=depth,
        model_type=str(getattr(student_config, "model_type", "unknown")),
        layers=config.layers,
        copied_layers=list(range(config.copy)),
        random_layers=list(range(config.copy, config.layers)),
        copied_other=copied_other,
        random_other=random_other,
    )
    log.info("student: %d layer(s) of %s (%s); copied embeddings + layer(s) %s, random layer(s) %s",
             config.layers, config.source, source.kind, info.copied_layers, info.random_layers)
    del source_model
    return student.train(), tokenizer, info


def save_student(model: torch.nn.Module, tokenizer: Any, out_dir: Path, max_seq_length: int) -> Path:
    """Write ``model`` as a sentence-transformers folder: weights, tokenizer, mean pooling, normalisation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    dims = int(model.config.hidden_size)
    _write_json(out_dir / "modules.json", MODULES)
    _write_json(out_dir / "1_Pooling" / "config.json", {"word_embedding_dimension": dims, **POOLING_CONFIG})
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(out_dir / "config_sentence_transformers.json",
                {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    return out_dir


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
