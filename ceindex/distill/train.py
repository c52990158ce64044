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
and ``_work/`` is removed. What the folder holds and which settings made it: ``ceindex.distill.workdir``.

``distill`` reads as its steps: identify the settings, prepare the folder, prepare the run (data, triples,
model, optimiser), resume or measure the start, train the remaining epochs, finish.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ceindex.data.files import atomic_write_text
from ceindex.distill.batches import plan_batches
from ceindex.distill.config import StudentConfig, TrainConfig
from ceindex.distill.data import TrainingData, load_sources
from ceindex.distill.evaluate import eval_doc_ids, held_out_metrics
from ceindex.distill.init import build_student, resolve_source, save_student
from ceindex.distill.workdir import (
    FORMAT,
    META_FILE,
    WORK,
    RunState,
    finished_metadata,
    prepare_out_dir,
    read_state,
    settings_fingerprint,
    write_state,
)
from ceindex.errors import ConfigError, ModelError
from ceindex.models.runtime import weights_sha256

log = logging.getLogger(__name__)

__all__ = ["META_FILE", "WORK", "DistillResult", "EpochRecord", "distill"]


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    mnrl_loss: float
    margin_mse_loss: float | None
    steps: int
    seconds: float
    held_out: dict[str, float] | None = None
    de_loss: float | None = None
    partial: bool = False  # the time budget ran out inside this epoch
    first_step: int = 0  # batches of this epoch done before this record (a resumed, partial epoch)


@dataclass
class DistillResult:
    out_dir: Path
    metadata: dict[str, Any]
    resumed_from_epoch: int = 0  # epochs already done when this call started
    already_done: bool = False


@dataclass
class _Run:
    """What one call trains with: data and triples, the model, its optimiser, and the held-out check."""

    data: TrainingData
    triples: list[tuple[str, str, str]]
    margins: np.ndarray | None  # teacher margins, one per triple (None without a teacher)
    de_targets: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None  # DE teacher: query, doc vectors
    model: Any  # SentenceTransformer
    tokenizer: Any
    eval_ids: list[str]  # the documents the held-out queries are searched in
    plans: list[list[list[int]]]  # per epoch, the batches (indices into triples)
    optimizer: torch.optim.Optimizer
    scheduler: Any

    def held_out(self, train: TrainConfig) -> dict[str, float] | None:
        """nDCG@10 and friends on the held-out queries; None when the split holds none out."""
        if not self.data.held_out:
            return None
        return held_out_metrics(self.model, self.tokenizer, self.data.queries, self.data.held_out_qrels,
                                self.data.docs, self.eval_ids, max_length=train.max_length,
                                query_max_length=train.query_max_length)


@dataclass
class _WallClock:
    """End-to-end seconds, summed over an interrupted run and the calls that resumed it."""

    before: float  # what earlier calls spent
    started: float  # perf_counter() when this call started

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started


class _StopRequested(Exception):
    """Raised by the ``stop_after`` hook (tests simulate an interruption with it)."""


class _BudgetSpent(Exception):
    """Raised when ``--max-minutes`` ran out; the partial epoch is checkpointed first."""


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

    ``teacher_model``: the cross-encoder whose margins are distilled (needed when ``train.teacher``); the dual-encoder
    teacher is ``train.teacher_de``.
    ``restart``: discard a previous run's checkpoints / finished model in ``out_dir``.
    ``stop_after_epoch``: stop (as if interrupted) once this epoch is checkpointed; for tests.
    """
    out = Path(out_dir).expanduser()
    fingerprint, teacher_sha, de_sha = _identify(student, train, teacher_model)
    prepare_out_dir(out, fingerprint, restart)
    existing = finished_metadata(out)
    if existing is not None:
        return _already_done(out, existing)
    started = time.perf_counter()
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    state = read_state(work, fingerprint)
    resumed_from, clock = state.epochs_done, _WallClock(state.wall_seconds, started)
    run = _prepare(work, state, student, train, teacher_model, (teacher_sha, de_sha), cache_dir)
    _resume_or_measure_start(out, work, state, run, train)
    complete = True
    try:
        _train_epochs(work, state, run, train, clock, progress, stop_after_epoch)
    except _StopRequested as stop:
        log.warning("%s; rerun the same command to resume", stop)
        return DistillResult(out, {}, resumed_from_epoch=resumed_from)
    except _BudgetSpent as spent:
        log.warning("%s: writing the best model so far; rerun the same command to continue", spent)
        complete = False
    state.wall_seconds = clock.total()
    meta = _finish(out, work, state, run, train, student, teacher_model, teacher_sha, complete=complete)
    return DistillResult(out, meta, resumed_from_epoch=resumed_from)


# --------------------------------------------------------------------------- the steps of distill
def _identify(student: StudentConfig, train: TrainConfig, teacher_model: str | None) -> tuple[str, str | None, str | None]:
    """The settings' fingerprint and the teachers' weights sha256 (None without that teacher)."""
    if train.teacher and not teacher_model:
        raise ConfigError("--teacher needs the cross-encoder (--model) to score margins; or pass --no-teacher")
    if not train.source_specs():
        raise ConfigError("no training source: give --data DIR (qrels of --split, or --split none for its corpus "
                          "alone), --triples FILE and/or --corpus PATH")
    source = resolve_source(student.source)
    teacher_sha = _teacher_sha(teacher_model) if train.teacher else None
    de_sha = _teacher_de_sha(str(train.teacher_de)) if _uses_teacher_de(train) else None
    fingerprint = settings_fingerprint(student, train, weights_sha256(source.path), teacher_sha, de_sha)
    return fingerprint, teacher_sha, de_sha


def _already_done(out: Path, existing: dict[str, Any]) -> DistillResult:
    log.info("%s already holds the model these settings train (finished %s); nothing to do",
             out, existing.get("finished"))
    epochs_done = len({e["epoch"] for e in existing.get("epochs", []) if not e.get("partial")})
    return DistillResult(out, existing, resumed_from_epoch=epochs_done, already_done=True)


def _prepare(
    work: Path, state: RunState, student: StudentConfig, train: TrainConfig, teacher_model: str | None,
    shas: tuple[str | None, str | None], cache_dir: Path | None,
) -> _Run:
    """Data, triples (+ margins), DE-teacher vectors, the model (checkpoint or fresh), the batches, the optimiser."""
    prepared = time.perf_counter()
    data = load_sources(train.source_specs(), held_out=train.held_out, seed=train.seed,
                        negatives_depth=train.negatives_depth)
    triples, margins = _triples(work, data, train, teacher_model, shas[0], cache_dir)
    de_targets = None
    if _uses_teacher_de(train):
        _check_dimensions(_teacher_de_path(train.teacher_de), student)
        de_targets = _de_targets(data, triples, train, shas[1], cache_dir)
    if not state.epochs_done and not state.epoch_steps_done:
        state.prepare_seconds = time.perf_counter() - prepared
    model, tokenizer, info = _model_for(work, state, student, train)
    state.student = info
    relevant_held_out = {d for q in data.held_out for d in data.judged[q]}
    eval_ids = eval_doc_ids(data.doc_ids, relevant_held_out, train.eval_docs, train.seed)
    plans = [plan_batches(triples, data.relevant, train.batch_size, train.seed, e) for e in range(1, train.epochs + 1)]
    optimizer, scheduler = _optimizer(model, train, sum(len(p) for p in plans))
    return _Run(data, triples, margins, de_targets, model, tokenizer, eval_ids, plans, optimizer, scheduler)


def _resume_or_measure_start(out: Path, work: Path, state: RunState, run: _Run, train: TrainConfig) -> None:
    """Resuming: restore optimiser, scheduler and RNG. Starting: score the untrained student on the held-out."""
    if state.checkpoint:
        _load_trainer_state(work / state.checkpoint, run.optimizer, run.scheduler)
        log.info("resuming %s after epoch %d of %d", out, state.epochs_done, train.epochs)
    elif run.data.held_out and state.init_held_out is None:
        state.init_held_out = run.held_out(train)
        log.info("held-out before training (%d queries, %d docs): %s", len(run.data.held_out), len(run.eval_ids),
                 state.init_held_out)


def _train_epochs(
    work: Path, state: RunState, run: _Run, train: TrainConfig, clock: _WallClock, progress: bool,
    stop_after_epoch: int | None,
) -> None:
    """The remaining epochs, each checkpointed; stops early, when the time budget is spent (after checkpointing
    the partial epoch), or (tests) after ``stop_after_epoch``."""
    losses = _losses(run.model, train)
    deadline = clock.started + 60.0 * train.max_minutes if train.max_minutes else None
    for epoch in range(state.epochs_done + 1, train.epochs + 1):
        if state.stopped_early:
            break
        record = _train_epoch(run, losses, epoch, train, progress, state.epoch_steps_done, deadline)
        record.held_out = run.held_out(train)
        state.train_seconds += record.seconds
        state.wall_seconds = clock.total()
        _after_epoch(work, state, record, run, train)
        if record.partial:
            raise _BudgetSpent(f"the time budget of {train.max_minutes:g} min is spent in epoch {epoch} "
                               f"(after {state.epoch_steps_done} of {len(run.plans[epoch - 1])} batches)")
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < train.epochs:
            raise _StopRequested(f"stopped after epoch {epoch} as requested")


# --------------------------------------------------------------------------- setup
def _teacher_sha(model: str | None) -> str:
    path = Path(model or "").expanduser()
    if not path.is_dir():
        raise ModelError(f"teacher cross-encoder folder {model!r} does not exist (or is not a folder)")
    return weights_sha256(resolve_source(str(path)).path)


def _uses_teacher_de(train: TrainConfig) -> bool:
    """A DE teacher with weight 0 is never computed, so it is not part of the run (nor of its metadata)."""
    return bool(train.teacher_de) and train.de_weight > 0


def _teacher_de_sha(model: str) -> str:
    return weights_sha256(resolve_source(_teacher_de_path(model)).path)


def _teacher_de_path(model: str) -> str:
    if model == "baseline":
        from ceindex.models.dual import baseline_de_path

        return str(baseline_de_path())
    return model


def _triples(
    work: Path, data: TrainingData, train: TrainConfig, teacher_model: str | None, teacher_sha: str | None,
    cache_dir: Path | None,
) -> tuple[list[tuple[str, str, str]], np.ndarray | None]:
    """The sources' triples (+ teacher margins), computed once and kept in ``_work/triples.json``.

    With the CE teacher, a label-free (pseudo-query) triple whose negative the CE scores at least as high as the
    positive is dropped: the pseudo label is then more likely wrong than right."""
    path = work / "triples.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        triples = [tuple(t) for t in saved["triples"]]
        margins = np.array(saved["margins"], dtype=np.float32) if saved["margins"] is not None else None
        return triples, margins  # type: ignore[return-value]
    triples = list(data.triples)
    margins = None
    if train.teacher:
        from ceindex.distill.teacher import teacher_margins

        margins = teacher_margins(str(teacher_model), triples, data.queries, data.docs,
                                  max_length=train.teacher_max_length, batch_size=train.teacher_batch_size,
                                  cache_dir=cache_dir, model_sha256=teacher_sha or "")
        triples, margins = _drop_contradicted_pseudo(triples, margins, data.pseudo_queries)
    payload = {"triples": triples, "margins": margins.tolist() if margins is not None else None}
    atomic_write_text(path, json.dumps(payload))
    return triples, margins


def _drop_contradicted_pseudo(
    triples: list[tuple[str, str, str]], margins: np.ndarray, pseudo: set[str]
) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    keep = [i for i, (q, _, _) in enumerate(triples) if q not in pseudo or margins[i] > 0]
    dropped = len(triples) - len(keep)
    if dropped:
        log.info("dropped %d of %d pseudo-query triples the cross-encoder contradicts (negative >= positive)",
                 dropped, sum(1 for q, _, _ in triples if q in pseudo))
    if not keep:
        raise ConfigError("the cross-encoder contradicts every pseudo-query triple: nothing left to train on")
    return [triples[i] for i in keep], margins[keep]


def _de_targets(
    data: TrainingData, triples: list[tuple[str, str, str]], train: TrainConfig, de_sha: str | None,
    cache_dir: Path | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The dual-encoder teacher's vectors of every training query and document (cached on disk)."""
    from ceindex.distill.teacher_de import teacher_embeddings

    model = _teacher_de_path(str(train.teacher_de))
    query_ids = {q for q, _, _ in triples}
    doc_ids = {d for _, p, n in triples for d in (p, n)}
    queries = teacher_embeddings(model, {q: data.queries[q] for q in query_ids}, train.query_max_length,
                                 cache_dir=cache_dir, model_sha256=de_sha or "")
    docs = teacher_embeddings(model, {d: data.docs[d] for d in doc_ids}, train.max_length,
                              cache_dir=cache_dir, model_sha256=de_sha or "")
    return queries, docs


def _check_dimensions(teacher: str, student: StudentConfig) -> None:
    """Refuse a teacher of another width before paying for its embeddings."""
    from transformers import AutoConfig

    def width(path: Path) -> int | None:
        config = AutoConfig.from_pretrained(str(path))
        value = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or getattr(config, "d_model", None)
        return int(value) if value else None

    teacher_dims, student_dims = width(resolve_source(teacher).path), width(resolve_source(student.source).path)
    if teacher_dims is None or student_dims is None:
        raise ConfigError(f"cannot read the width of --teacher-de {teacher} or of the student; check both configs")
    if student_dims != teacher_dims:
        raise ConfigError(
            f"--teacher-de gives {teacher_dims}-dimensional vectors but the student has {student_dims}: the student "
            "learns to match the teacher's embeddings, so their dimensions must be equal; choose a teacher of the "
            "same width (or train without --teacher-de)"
        )


def _model_for(work: Path, state: RunState, student: StudentConfig, train: TrainConfig) -> tuple[Any, Any, dict]:
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
    if _uses_teacher_de(train):
        out["de"] = True
    return out


def de_teacher_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Match a dual-encoder teacher: mean cosine distance of each column (queries, positives, negatives) to the
    teacher's vectors, plus KL(teacher || student) of each query's softmax over the batch's documents."""
    from torch.nn import functional as F

    distance = sum((1.0 - F.cosine_similarity(s, t, dim=-1)).mean() for s, t in zip(student, teacher)) / len(student)
    s_q, t_q = F.normalize(student[0], dim=-1), F.normalize(teacher[0], dim=-1)
    s_d = F.normalize(torch.cat(student[1:]), dim=-1)
    t_d = F.normalize(torch.cat(teacher[1:]), dim=-1)
    s_log = F.log_softmax(s_q @ s_d.T / temperature, dim=-1)
    t_prob = F.softmax(t_q @ t_d.T / temperature, dim=-1)
    kl = F.kl_div(s_log, t_prob, reduction="batchmean")
    return distance + kl


# --------------------------------------------------------------------------- training
def _train_epoch(
    run: _Run, losses: dict[str, Any], epoch: int, train: TrainConfig, progress: bool, first_step: int,
    deadline: float | None,
) -> EpochRecord:
    """Batches ``first_step..`` of the epoch; stops (``partial``) after a batch that ends past ``deadline``."""
    run.model.train()
    started = time.perf_counter()
    totals = {"loss": 0.0, "mnrl": 0.0, "margin": 0.0, "de": 0.0}
    batches = run.plans[epoch - 1][first_step:]
    bar = tqdm(batches, desc=f"epoch {epoch}/{train.epochs}", unit="batch", disable=not progress)
    done, partial = 0, False
    for batch in bar:
        parts = _step(run, losses, batch, train)
        for key, value in parts.items():
            totals[key] += value
        done += 1
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
        if deadline is not None and time.perf_counter() > deadline and done < len(batches):
            partial = True
            break
    bar.close()
    steps = max(done, 1)
    return EpochRecord(
        epoch=epoch,
        loss=round(totals["loss"] / steps, 5),
        mnrl_loss=round(totals["mnrl"] / steps, 5),
        margin_mse_loss=round(totals["margin"] / steps, 5) if "margin" in losses else None,
        steps=done,
        seconds=round(time.perf_counter() - started, 1),
        de_loss=round(totals["de"] / steps, 5) if "de" in losses else None,
        partial=partial,
        first_step=first_step,
    )


def _step(run: _Run, losses: dict[str, Any], batch: list[int], train: TrainConfig) -> dict[str, float]:
    """One optimiser step on a batch of triples; returns its loss and each term's part."""
    rows = [run.triples[i] for i in batch]
    queries, docs = run.data.queries, run.data.docs
    columns = [
        _features(run.tokenizer, [queries[q] for q, _, _ in rows], train.query_max_length),
        _features(run.tokenizer, [docs[p] for _, p, _ in rows], train.max_length),
        _features(run.tokenizer, [docs[n] for _, _, n in rows], train.max_length),
    ]
    embeddings = [run.model(column)["sentence_embedding"] for column in columns]
    mnrl = losses["mnrl"].compute_loss_from_embeddings(embeddings, None)
    loss, parts = mnrl, {"mnrl": float(mnrl.detach())}
    if "margin" in losses and run.margins is not None:
        labels = torch.tensor(run.margins[batch], dtype=torch.float32)
        margin = losses["margin"].compute_loss_from_embeddings(embeddings, labels)
        loss = loss + train.margin_weight * margin
        parts["margin"] = float(margin.detach())
    if "de" in losses and run.de_targets is not None:
        de = de_teacher_loss(embeddings, _teacher_columns(run.de_targets, rows), train.de_kl_temperature)
        loss = loss + train.de_weight * de
        parts["de"] = float(de.detach())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    parts["loss"] = float(loss.detach())
    return parts


def _teacher_columns(targets: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
                     rows: list[tuple[str, str, str]]) -> list[torch.Tensor]:
    queries, docs = targets
    return [torch.from_numpy(np.stack([queries[q] for q, _, _ in rows])),
            torch.from_numpy(np.stack([docs[p] for _, p, _ in rows])),
            torch.from_numpy(np.stack([docs[n] for _, _, n in rows]))]


def _features(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def _after_epoch(work: Path, state: RunState, record: EpochRecord, run: _Run, train: TrainConfig) -> None:
    """Checkpoint the finished (or budget-cut) epoch, keep the best model, decide on early stopping, swap
    state.json."""
    end = record.first_step + record.steps
    checkpoint = f"checkpoint-{record.epoch}-step{end}" if record.partial else f"checkpoint-{record.epoch}"
    _save_checkpoint(work / checkpoint, run, train)
    old = {state.checkpoint, state.best} - {None}
    _track_best(state, record, checkpoint, train)
    state.checkpoint = checkpoint
    if record.partial:
        state.epoch_steps_done = end
    else:
        state.epochs_done, state.epoch_steps_done = record.epoch, 0
    state.history.append(asdict(record))
    write_state(work, state)
    for name in old - {state.checkpoint, state.best}:
        shutil.rmtree(work / str(name), ignore_errors=True)
    shutil.rmtree(work / "init", ignore_errors=True)
    _log_epoch(record)


def _save_checkpoint(folder: Path, run: _Run, train: TrainConfig) -> None:
    """The model, and the optimiser, scheduler and RNG a resume continues with."""
    _save_model(run.model, run.tokenizer, folder / "model", train)
    torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, folder / "trainer.pt")


def _track_best(state: RunState, record: EpochRecord, checkpoint: str, train: TrainConfig) -> None:
    """Remember the epoch with the best held-out nDCG@10 (the last one without a held-out); stop early after
    ``patience`` epochs without improvement."""
    score = record.held_out["ndcg@10"] if record.held_out else None
    if score is None or state.best_score is None or score > state.best_score:
        state.best_epoch, state.best_score, state.best = record.epoch, score, checkpoint
        state.best_record = len(state.history)  # the index ``record`` gets in the history
    elif not record.partial and state.best_epoch is not None and record.epoch - state.best_epoch >= train.patience:
        state.stopped_early = True
        log.info("held-out nDCG@10 has not improved for %d epoch(s) (best %.4f at epoch %d): stopping early",
                 record.epoch - state.best_epoch, state.best_score, state.best_epoch)


def _log_epoch(record: EpochRecord) -> None:
    score = record.held_out["ndcg@10"] if record.held_out else None
    held = f", held-out nDCG@10 {score:.4f}" if score is not None else ""
    log.info("epoch %d%s: loss %.4f (MNRL %.4f%s%s)%s, %.0f s", record.epoch, " (partial)" if record.partial else "",
             record.loss, record.mnrl_loss,
             f", MarginMSE {record.margin_mse_loss:.4f}" if record.margin_mse_loss is not None else "",
             f", DE teacher {record.de_loss:.4f}" if record.de_loss is not None else "", held, record.seconds)


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
    out: Path, work: Path, state: RunState, run: _Run, train: TrainConfig, student: StudentConfig,
    teacher_model: str | None, teacher_sha: str | None, *, complete: bool = True,
) -> dict[str, Any]:
    """Copy the chosen epoch's model into ``out`` and write ``ceindex_distill.json``; remove ``_work/`` when the run
    is complete (a budget-stopped run keeps it, so the same command continues it)."""
    _copy_model(work / str(state.best or state.checkpoint) / "model", out)
    meta = _metadata(state, run, train, student, teacher_model, teacher_sha) | {"complete": complete}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    if complete:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (epoch %s of %d)%s", out, state.best_epoch or state.epochs_done, train.epochs,
             "" if complete else "; the time budget was spent: rerun the same command to continue")
    return meta


def _copy_model(chosen: Path, out: Path) -> None:
    for item in chosen.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)


def _metadata(
    state: RunState, run: _Run, train: TrainConfig, student: StudentConfig, teacher_model: str | None,
    teacher_sha: str | None,
) -> dict[str, Any]:
    best = state.history[state.best_record] if state.best_record is not None else None
    return {
        "format": FORMAT,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": state.fingerprint,
        "student": state.student | {"pooling": "mean", "normalized": True, "max_seq_length": train.saved_max_length},
        "teacher": {"model": str(Path(teacher_model).expanduser().resolve()), "weights_sha256": teacher_sha,
                    "max_length": train.teacher_max_length} if train.teacher else None,
        "training_data": _training_data_record(run, train),
        "teacher_de": {"model": _teacher_de_path(str(train.teacher_de)), "weight": train.de_weight}
        if _uses_teacher_de(train) else None,
        "loss": "MultipleNegativesRankingLoss(scale)" + (
            " + margin_weight * MarginMSELoss(scale * cosine margins vs CE logit margins)" if train.teacher else "")
        + (" + de_weight * (cosine distance to the DE teacher + in-batch similarity KL)"
           if _uses_teacher_de(train) else ""),
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


def _training_data_record(run: _Run, train: TrainConfig) -> dict[str, Any]:
    data = run.data
    first = data.sources[0] if len(data.sources) == 1 else {}
    return {
        "sources": data.sources,
        "data_dir": str(Path(train.data_dir).expanduser().resolve()) if train.data_dir else None,
        "split": train.split if train.data_dir else None,
        "qrels_sha256": first.get("qrels_sha256"),
        "train_queries": len({q for q, _, _ in run.triples}),
        "train_pairs": len({(q, p) for q, p, _ in run.triples}),
        "triples": len(run.triples),
        "pseudo_query_triples": sum(1 for q, _, _ in run.triples if q in data.pseudo_queries),
        "held_out_queries": len(data.held_out),
        "held_out_eval_docs": len(run.eval_ids) if data.held_out else 0,
        "negatives": first.get("negatives", "per source (see sources)"),
        "teacher_margin_mean": round(float(run.margins.mean()), 4) if run.margins is not None else None,
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in ("ceindex", "torch", "transformers", "sentence-transformers"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
