"""The distill output folder: which settings made it, whether it is finished, and the resume record.

``out_dir`` holds either a finished model (with ``ceindex_distill.json``) or, while training, ``_work/``
whose ``state.json`` names the last finished epoch's checkpoint and the best model so far. Both carry a
fingerprint of the settings, so a rerun resumes only what the very same settings started.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ceindex.data.files import atomic_write_text
from ceindex.distill.config import StudentConfig, TrainConfig
from ceindex.errors import ConfigError

META_FILE = "ceindex_distill.json"
WORK = "_work"
STATE_FILE = "state.json"
FORMAT = 1


@dataclass
class RunState:
    """What ``_work/state.json`` records: enough to resume after the last finished epoch."""

    fingerprint: str
    epochs_done: int = 0
    epoch_steps_done: int = 0  # batches of epoch ``epochs_done + 1`` already trained (a budget-cut epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    init_held_out: dict[str, float] | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    checkpoint: str | None = None  # folder name under _work
    best: str | None = None
    best_record: int | None = None  # index in ``history`` of the best record (an epoch may have a partial record)
    train_seconds: float = 0.0
    prepare_seconds: float = 0.0
    wall_seconds: float = 0.0  # end to end, summed over interrupted and resumed invocations
    student: dict[str, Any] = field(default_factory=dict)


def settings_fingerprint(
    student: StudentConfig, train: TrainConfig, source_sha: str, teacher_sha: str | None, de_sha: str | None = None
) -> str:
    """sha256 of everything that decides the trained model: student copy, hyper-parameters, data, teachers.
    The time budget is left out: a rerun with more (or less) time continues the same run."""
    student_key = {"layers": student.layers, "copy": student.copy, "source_sha256": source_sha}
    if student.random_init:
        student_key["random_init"] = True
    train_key = {k: v for k, v in train.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    train_key["drop_sources"] = sorted(s.strip() for s in (train.drop_sources or "").split(",") if s.strip())
    train_key["sources"] = [_spec_key(spec) for spec in train.source_specs()]
    if not de_sha:
        for key in ("de_weight", "de_kl_temperature"):
            train_key.pop(key)
    if not train.teacher:
        for key in ("margin_weight", "teacher_max_length", "teacher_batch_size"):
            train_key.pop(key)
    payload = {
        "student": student_key,
        "train": train_key,
        "teacher_sha256": teacher_sha,
        "format": FORMAT,
    }
    if de_sha:
        payload["teacher_de_sha256"] = de_sha
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# Paths are replaced by the contents of the files they name (``sources``); the budget and the teacher's path
# (its weights are hashed) do not decide the model.
_NOT_IN_FINGERPRINT = ("data_dir", "split", "triples", "corpus", "drop_sources", "max_minutes", "teacher_de",
                       "pseudo_queries", "max_triples")


def _spec_key(spec: Any) -> dict[str, Any]:
    """A training source by kind, settings and the sha256 of every file it reads, so an edited file is never
    resumed or kept as if it were the same, and a moved one is."""
    return {"kind": spec.kind, "split": spec.split if spec.kind == "qrels" else None, "limit": spec.limit,
            "files": [_file_sha256(p) for p in _source_files(spec)]}


def _source_files(spec: Any) -> list[Path]:
    from ceindex.data.corpus import corpus_path
    from ceindex.data.triples import sources_file

    root = Path(spec.path.strip()).expanduser()
    if spec.kind == "qrels":
        return [root / "qrels" / f"{spec.split}.tsv", root / "queries.jsonl", corpus_path(root, None)]
    if spec.kind == "corpus":
        return [corpus_path(root, None) if root.is_dir() else root]
    names = sources_file(root) if root.is_file() else None
    return [root] + ([names] if names else [])


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_out_dir(out: Path, fingerprint: str, restart: bool) -> None:
    """Refuse a file, a foreign folder or another run's output; with ``restart`` discard our previous run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the trained model")
    if not out.is_dir():
        return
    ours = (out / META_FILE).is_file() or (out / WORK).is_dir()
    if not ours and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty (and is not a distill output); choose a new folder")
    if restart:
        shutil.rmtree(out / WORK, ignore_errors=True)
        (out / META_FILE).unlink(missing_ok=True)
        return
    for label, found in (("finished model", _meta_fingerprint(out)), ("interrupted run", _state_fingerprint(out / WORK))):
        if found is not None and found != fingerprint:
            raise ConfigError(
                f"--out {out} holds a {label} made with different settings (model, data or hyper-parameters); "
                "rerun with the same settings to resume/keep it, pass --restart to discard it, or choose another --out"
            )


def _meta_fingerprint(out: Path) -> str | None:
    path = out / META_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint") if path.is_file() else None


def _state_fingerprint(work: Path) -> str | None:
    path = work / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint") if path.is_file() else None


def finished_metadata(out: Path) -> dict[str, Any] | None:
    """The metadata of a finished model in ``out`` (no ``_work/`` left), else None."""
    path = out / META_FILE
    if path.is_file() and (out / "model.safetensors").is_file() and not (out / WORK).exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def read_state(work: Path, fingerprint: str) -> RunState:
    path = work / STATE_FILE
    if not path.is_file():
        return RunState(fingerprint=fingerprint)
    return RunState(**json.loads(path.read_text(encoding="utf-8")))


def write_state(work: Path, state: RunState) -> None:
    atomic_write_text(work / STATE_FILE, json.dumps(asdict(state), indent=2))
