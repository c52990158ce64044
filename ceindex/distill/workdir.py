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
    train_key = train.to_dict() | {"data_dir": _resolved(train.data_dir), "corpus": _resolved(train.corpus),
                                   "triples": [_file_key(p) for p in (train.triples or "").split(",") if p.strip()]}
    train_key.pop("max_minutes", None)
    for optional in ("teacher_de", "de_weight", "de_kl_temperature"):
        if not train.teacher_de:
            train_key.pop(optional, None)
    for optional, default in (("triples", []), ("drop_sources", None), ("corpus", None), ("max_triples", 0)):
        if train_key.get(optional) == default:
            train_key.pop(optional, None)
    if not train.corpus and train.split.strip().lower() not in ("", "none"):
        train_key.pop("pseudo_queries", None)
    payload = {
        "student": student_key,
        "train": train_key,
        "teacher_sha256": teacher_sha,
        "format": FORMAT,
    }
    if de_sha:
        payload["teacher_de_sha256"] = de_sha
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _file_key(path: str) -> list[str | None]:
    """A triples file by path and content, so an edited file is never resumed as if it were the same."""
    resolved = Path(path.strip()).expanduser().resolve()
    if not resolved.is_file():
        return [str(resolved), None]
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return [str(resolved), digest.hexdigest()]


def _resolved(path: str | None) -> str | None:
    return str(Path(path.strip()).expanduser().resolve()) if path else None


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
