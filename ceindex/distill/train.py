"""Train the student dual encoder, checkpoint every epoch, resume, stop early, write the final model.

Why a hand-written loop: sentence-transformers' trainer needs the ``datasets`` and ``accelerate`` packages
(not installed, not otherwise needed) and adds per-step overhead that matters on a 2-core CPU. The loop is
small and uses sentence-transformers' own loss modules on embeddings computed ONCE per batch:

    loss = MultipleNegativesRankingLoss(q, pos, neg)            # in-batch + BM25 hard negatives
         + margin_weight * MarginMSELoss(q, pos, neg; margin)   # with --teacher: CE(q,pos) - CE(q,neg)

Both losses see the student's cosine x ``scale`` (20), so MarginMSE matches the teacher's logit margins on
the same logit scale MNRL trains; combining them per step (rather than alternating) keeps each update
anchored to the contrastive objective while the teacher shapes the margins.

Layout of ``out_dir`` while training: ``_work/`` holds the mined triples (+ teacher margins), the last
finished epoch's checkpoint (model, optimizer, scheduler, RNG) and the best model so far; state.json names
them and is replaced atomically. Rerunning the same command resumes after the last finished epoch. At the
end the best epoch's model (by held-out nDCG@10) is written to ``out_dir`` with ``ceindex_distill.json``
and ``_work/`` is removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ceindex.distill.batches import plan_batches
from ceindex.distill.config import StudentConfig, TrainConfig
from ceindex.distill.data import TrainingData, load_training_data
from ceindex.distill.evaluate import eval_doc_ids, held_out_metrics
from ceindex.distill.init import build_student, resolve_source, save_student
from ceindex.distill.mining import mine_hard_negatives
from ceindex.errors import ConfigError, ModelError
from ceindex.models.runtime import weights_sha256

log = logging.getLogger(__name__)

META_FILE = "ceindex_distill.json"
WORK = "_work"
FORMAT = 1


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    mnrl_loss: float
    margin_mse_loss: float | None
    steps: int
    seconds: float
    held_out: dict[str, float] | None = None


@dataclass
class _State:
    """What ``_work/state.json`` records: enough to resume after the last finished epoch."""

    fingerprint: str
    epochs_done: int = 0
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


@dataclass
class DistillResult:
    out_dir: Path
    metadata: dict[str, Any]
    resumed_from_epoch: int = 0  # epochs already done when this call started
    already_done: bool = False


class _StopRequested(Exception):
    """Raised by the ``stop_after`` hook (tests simulate an interruption with it)."""


# --------------------------------------------------------------------------- public
def distill(
    student: StudentConfig,
    train: TrainConfig,
    out_dir: str | Path,
    *,
    teacher_model: str | None = None,
    restart: bool = False,
    progress: bool = True,
    cache_dir: Path | None = None,
    stop_after_epoch: int | None = None,
) -> DistillResult:
    """Build the student from ``student.source`` and train it; see the module docstring.

    ``teacher_model``: the cross-encoder whose margins are distilled (needed when ``train.teacher``).
    ``restart``: discard a previous run's checkpoints / finished model in ``out_dir``.
    ``stop_after_epoch``: stop (as if interrupted) once this epoch is checkpointed; for tests.
    """
    out = Path(out_dir).expanduser()
    if train.teacher and not teacher_model:
        raise ConfigError("--teacher needs the cross-encoder (--model) to score margins; or pass --no-teacher")
    source = resolve_source(student.source)
    teacher_sha = _teacher_sha(teacher_model) if train.teacher else None
    fingerprint = _fingerprint(student, train, weights_sha256(source.path), teacher_sha)
    _prepare_out_dir(out, fingerprint, restart)
    existing = _finished_metadata(out)
    if existing is not None:
        log.info("%s already holds the model these settings train (finished %s); nothing to do",
                 out, existing.get("finished"))
        return DistillResult(out, existing, resumed_from_epoch=len(existing.get("epochs", [])), already_done=True)

    call_started = time.perf_counter()
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    state = _read_state(work, fingerprint)
    resumed_from, wall_before = state.epochs_done, state.wall_seconds
    prepared = time.perf_counter()
    data = load_training_data(train.data_dir, train.split, train.held_out, train.seed)
    triples, margins = _triples(work, data, train, teacher_model, teacher_sha, cache_dir)
    if not resumed_from:
        state.prepare_seconds = time.perf_counter() - prepared

    model, tokenizer, info = _model_for(work, state, student, train)
    state.student = info
    eval_ids = eval_doc_ids(data.doc_ids, {d for q in data.held_out for d in data.relevant[q]}, train.eval_docs, train.seed)
    evaluate: Callable[[], dict[str, float]] | None = None
    if data.held_out:
        def evaluate() -> dict[str, float]:
            return held_out_metrics(model, tokenizer, data.queries, data.held_out_qrels, data.docs, eval_ids,
                                    max_length=train.max_length, query_max_length=train.query_max_length)

    plans = [plan_batches(triples, data.relevant, train.batch_size, train.seed, e) for e in range(1, train.epochs + 1)]
    optimizer, scheduler = _optimizer(model, train, sum(len(p) for p in plans))
    if state.checkpoint:
        _load_trainer_state(work / state.checkpoint, optimizer, scheduler)
        log.info("resuming %s after epoch %d of %d", out, state.epochs_done, train.epochs)
    elif evaluate is not None and state.init_held_out is None:
        state.init_held_out = evaluate()
        log.info("held-out before training (%d queries, %d docs): %s", len(data.held_out), len(eval_ids), state.init_held_out)

    losses = _losses(model, train)
    try:
        for epoch in range(state.epochs_done + 1, train.epochs + 1):
            if state.stopped_early:
                break
            record = _train_epoch(model, tokenizer, losses, optimizer, scheduler, triples, margins, data,
                                  plans[epoch - 1], epoch, train, progress)
            if evaluate is not None:
                record.held_out = evaluate()
            state.train_seconds += record.seconds
            state.wall_seconds = wall_before + time.perf_counter() - call_started
            _after_epoch(work, state, record, model, tokenizer, optimizer, scheduler, train)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < train.epochs:
                raise _StopRequested(f"stopped after epoch {epoch} as requested")
    except _StopRequested as stop:
        log.warning("%s; rerun the same command to resume", stop)
        return DistillResult(out, {}, resumed_from_epoch=resumed_from)
    state.wall_seconds = wall_before + time.perf_counter() - call_started
    meta = _finish(out, work, state, data, train, student, triples, margins, teacher_model, teacher_sha,
                   len(eval_ids))
    return DistillResult(out, meta, resumed_from_epoch=resumed_from)


# --------------------------------------------------------------------------- setup
def _teacher_sha(model: str | None) -> str:
    path = Path(model or "").expanduser()
    if not path.is_dir():
        raise ModelError(f"teacher cross-encoder folder {model!r} does not exist (or is not a folder)")
    return weights_sha256(resolve_source(str(path)).path)


def _fingerprint(student: StudentConfig, train: TrainConfig, source_sha: str, teacher_sha: str | None) -> str:
    payload = {
        "student": {"layers": student.layers, "copy": student.copy, "source_sha256": source_sha},
        "train": train.to_dict() | {"data_dir": str(Path(train.data_dir).expanduser().resolve())},
        "teacher_sha256": teacher_sha,
        "format": FORMAT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _prepare_out_dir(out: Path, fingerprint: str, restart: bool) -> None:
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
    path = work / "state.json"
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint") if path.is_file() else None


def _finished_metadata(out: Path) -> dict[str, Any] | None:
    path = out / META_FILE
    if path.is_file() and (out / "model.safetensors").is_file() and not (out / WORK).exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _read_state(work: Path, fingerprint: str) -> _State:
    path = work / "state.json"
    if not path.is_file():
        return _State(fingerprint=fingerprint)
    return _State(**json.loads(path.read_text(encoding="utf-8")))


def _write_state(work: Path, state: _State) -> None:
    tmp = work / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    tmp.replace(work / "state.json")


def _triples(
    work: Path, data: TrainingData, train: TrainConfig, teacher_model: str | None, teacher_sha: str | None,
    cache_dir: Path | None,
) -> tuple[list[tuple[str, str, str]], np.ndarray | None]:
    """Mined triples (+ teacher margins), computed once and kept in ``_work/triples.json``."""
    path = work / "triples.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        triples = [tuple(t) for t in saved["triples"]]
        margins = np.array(saved["margins"], dtype=np.float32) if saved["margins"] is not None else None
        return triples, margins  # type: ignore[return-value]
    triples = mine_hard_negatives(data.train_pairs, data.doc_ids, data.docs, data.queries, data.relevant,
                                  depth=train.negatives_depth, seed=train.seed)
    if not triples:
        raise ConfigError("no training triple could be formed (every document is relevant to its query?)")
    margins = None
    if train.teacher:
        from ceindex.distill.teacher import teacher_margins

        margins = teacher_margins(str(teacher_model), triples, data.queries, data.docs,
                                  max_length=train.teacher_max_length, batch_size=train.teacher_batch_size,
                                  cache_dir=cache_dir, model_sha256=teacher_sha or "")
    payload = {"triples": triples, "margins": margins.tolist() if margins is not None else None}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    tmp.replace(path)
    return triples, margins


def _model_for(work: Path, state: _State, student: StudentConfig, train: TrainConfig) -> tuple[Any, Any, dict]:
    """A SentenceTransformer: from the last checkpoint, else freshly built from the source."""
    from sentence_transformers import SentenceTransformer

    if state.checkpoint:
        folder, info = work / state.checkpoint / "model", state.student
    else:
        hf_model, tokenizer, student_info = build_student(student, seed=train.seed)
        folder, info = work / "init", student_info.to_dict()
        shutil.rmtree(folder, ignore_errors=True)
        save_student(hf_model, tokenizer, folder, train.saved_max_length)
        del hf_model
    model = SentenceTransformer(str(folder), device="cpu")
    model.train()
    torch.manual_seed(train.seed)
    return model, model[0].tokenizer, info


def _optimizer(model: Any, train: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(train.warmup * total_steps), max(total_steps, 1))
    return optimizer, scheduler


def _losses(model: Any, train: TrainConfig) -> dict[str, Any]:
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses
    from sentence_transformers import util

    scale = train.scale

    def scaled_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return scale * util.pairwise_cos_sim(a, b)

    out = {"mnrl": losses.MultipleNegativesRankingLoss(model, scale=scale)}
    if train.teacher:
        out["margin"] = losses.MarginMSELoss(model, similarity_fct=scaled_cosine)
    return out


# --------------------------------------------------------------------------- training
def _train_epoch(
    model: Any, tokenizer: Any, losses: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
    triples: list[tuple[str, str, str]], margins: np.ndarray | None, data: TrainingData, batches: list[list[int]],
    epoch: int, train: TrainConfig, progress: bool,
) -> EpochRecord:
    model.train()
    started = time.perf_counter()
    totals = {"loss": 0.0, "mnrl": 0.0, "margin": 0.0}

    def features(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    bar = tqdm(batches, desc=f"epoch {epoch}/{train.epochs}", unit="batch", disable=not progress)
    for batch in bar:
        rows = [triples[i] for i in batch]
        columns = [
            features([data.queries[q] for q, _, _ in rows], train.query_max_length),
            features([data.docs[p] for _, p, _ in rows], train.max_length),
            features([data.docs[n] for _, _, n in rows], train.max_length),
        ]
        embeddings = [model(column)["sentence_embedding"] for column in columns]
        mnrl = losses["mnrl"].compute_loss_from_embeddings(embeddings, None)
        loss = mnrl
        if "margin" in losses and margins is not None:
            labels = torch.tensor(margins[batch], dtype=torch.float32)
            margin = losses["margin"].compute_loss_from_embeddings(embeddings, labels)
            loss = mnrl + train.margin_weight * margin
            totals["margin"] += float(margin.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        totals["loss"] += float(loss.detach())
        totals["mnrl"] += float(mnrl.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    steps = max(len(batches), 1)
    return EpochRecord(
        epoch=epoch,
        loss=round(totals["loss"] / steps, 5),
        mnrl_loss=round(totals["mnrl"] / steps, 5),
        margin_mse_loss=round(totals["margin"] / steps, 5) if "margin" in losses else None,
        steps=len(batches),
        seconds=round(time.perf_counter() - started, 1),
    )


def _after_epoch(
    work: Path, state: _State, record: EpochRecord, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer,
    scheduler: Any, train: TrainConfig,
) -> None:
    """Checkpoint the finished epoch, keep the best model, decide on early stopping, swap state.json."""
    epoch = record.epoch
    checkpoint = f"checkpoint-{epoch}"
    _save_model(model, tokenizer, work / checkpoint / "model", train)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, work / checkpoint / "trainer.pt")
    score = record.held_out["ndcg@10"] if record.held_out else None
    old = {state.checkpoint, state.best} - {None}
    improved = score is None or state.best_score is None or score > state.best_score
    if improved:
        state.best_epoch, state.best_score, state.best = epoch, score, checkpoint
    elif state.best_epoch is not None and epoch - state.best_epoch >= train.patience:
        state.stopped_early = True
        log.info("held-out nDCG@10 has not improved for %d epoch(s) (best %.4f at epoch %d): stopping early",
                 epoch - state.best_epoch, state.best_score, state.best_epoch)
    state.checkpoint, state.epochs_done = checkpoint, epoch
    state.history.append(asdict(record))
    _write_state(work, state)
    for name in old - {state.checkpoint, state.best}:
        shutil.rmtree(work / str(name), ignore_errors=True)
    shutil.rmtree(work / "init", ignore_errors=True)
    held = f", held-out nDCG@10 {score:.4f}" if score is not None else ""
    log.info("epoch %d: loss %.4f (MNRL %.4f%s)%s, %.0f s", epoch, record.loss, record.mnrl_loss,
             f", MarginMSE {record.margin_mse_loss:.4f}" if record.margin_mse_loss is not None else "", held,
             record.seconds)


def _save_model(model: Any, tokenizer: Any, folder: Path, train: TrainConfig) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_student(model[0].auto_model, tokenizer, tmp, train.saved_max_length)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    saved = torch.load(folder / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])


# --------------------------------------------------------------------------- finish
def _finish(
    out: Path, work: Path, state: _State, data: TrainingData, train: TrainConfig, student: StudentConfig,
    triples: list, margins: np.ndarray | None, teacher_model: str | None, teacher_sha: str | None, eval_docs: int,
) -> dict[str, Any]:
    chosen = work / str(state.best or state.checkpoint) / "model"
    for item in chosen.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": state.fingerprint,
        "student": state.student | {"pooling": "mean", "normalized": True, "max_seq_length": train.saved_max_length},
        "teacher": {"model": str(Path(teacher_model).expanduser().resolve()), "weights_sha256": teacher_sha,
                    "max_length": train.teacher_max_length} if train.teacher else None,
        "training_data": {
            "data_dir": str(Path(train.data_dir).expanduser().resolve()),
            "split": train.split,
            "qrels_sha256": data.qrels_sha256,
            "train_queries": len({q for q, _ in data.train_pairs}),
            "train_pairs": len(data.train_pairs),
            "triples": len(triples),
            "held_out_queries": len(data.held_out),
            "held_out_eval_docs": eval_docs if data.held_out else 0,
            "negatives": f"one per pair, drawn from the BM25 top {train.negatives_depth} minus the relevant documents",
            "teacher_margin_mean": round(float(margins.mean()), 4) if margins is not None else None,
        },
        "loss": "MultipleNegativesRankingLoss(scale)" + (
            " + margin_weight * MarginMSELoss(scale * cosine margins vs CE logit margins)" if train.teacher else ""),
        "hyper_parameters": train.to_dict() | {"layers": student.layers, "copy": student.copy},
        "seed": train.seed,
        "epochs": state.history,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "held_out_before_training": state.init_held_out,
        "held_out_metrics": best["held_out"] if best else None,
        "wall_time_s": {"prepare": round(state.prepare_seconds, 1), "training_epochs": round(state.train_seconds, 1),
                        "total": round(state.wall_seconds, 1)},
        "versions": _versions(),
    }
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / META_FILE)
    shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (epoch %s of %d)", out, state.best_epoch or state.epochs_done, train.epochs)
    return meta


def _versions() -> dict[str, str]:
    out = {}
    for name in ("ceindex", "torch", "transformers", "sentence-transformers"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
