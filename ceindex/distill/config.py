"""Settings of a distillation run: what the student is built from, and how it is trained.

The defaults of everything ``ceindex distill`` has a flag for come from the configuration section ``distill``
(``ceindex.config.DistillConfig``); the rest of the recipe (warm-up, weight decay, scale, ...) is fixed here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ceindex.config import DistillConfig
from ceindex.errors import ConfigError

_DEFAULTS = DistillConfig()


@dataclass(frozen=True)
class StudentConfig:
    """A dual encoder of ``layers`` transformer layers.

    Its embedding layer and first ``copy`` layers are copied from ``source`` (a cross-encoder's base
    model, or a dual encoder for the control); layers ``copy..layers-1`` are newly initialised (the
    architecture's own random init, seeded).
    """

    source: str
    layers: int = _DEFAULTS.layers
    copy: int = _DEFAULTS.copy
    random_init: bool = False  # copy nothing: the source's architecture with random (seeded) weights

    def __post_init__(self) -> None:
        if self.random_init and self.copy:
            raise ConfigError("--init-from random copies nothing; it cannot be combined with --copy > 0")
        if self.layers < 1:
            raise ConfigError(f"--layers must be >= 1 (transformer layers of the student), got {self.layers}")
        if self.copy < 0:
            raise ConfigError(f"--copy must be >= 0 (layers copied from the source), got {self.copy}")
        if self.copy > self.layers:
            raise ConfigError(
                f"--copy {self.copy} is more than --layers {self.layers}: the student cannot hold more copied "
                f"layers than it has; use --copy <= --layers"
            )


@dataclass(frozen=True)
class TrainConfig:
    """How the student is trained on (query, relevant document, BM25 hard negative) triples.

    Loss per batch: ``MultipleNegativesRankingLoss`` (in-batch + hard negatives, cosine x ``scale``),
    plus, with ``teacher``, ``margin_weight`` x ``MarginMSELoss`` whose labels are the cross-encoder's
    logit margins CE(q, pos) - CE(q, neg) and whose student margins are ``scale`` x cosine margins, so
    student and teacher margins live on the same logit scale; and, with ``teacher_de``, ``de_weight`` x (mean
    cosine distance of the student's query/positive/negative embeddings to the dual-encoder teacher's + KL of the
    teacher's in-batch query-document similarity distribution to the student's).
    """

    data_dir: str | None = None
    split: str = _DEFAULTS.split
    triples: str | None = _DEFAULTS.triples
    drop_sources: str | None = _DEFAULTS.drop_sources
    corpus: str | None = _DEFAULTS.corpus
    pseudo_queries: int = _DEFAULTS.pseudo_queries
    max_triples: int = _DEFAULTS.max_triples
    teacher_de: str | None = _DEFAULTS.teacher_de
    de_weight: float = _DEFAULTS.de_weight
    de_kl_temperature: float = 0.05  # the teacher's and student's in-batch similarities are softmaxed at cos / this
    max_minutes: float | None = _DEFAULTS.max_minutes  # not part of the fingerprint: a rerun with more time resumes
    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    lr: float = _DEFAULTS.lr
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = _DEFAULTS.max_length  # documents, in training and held-out evaluation
    query_max_length: int = _DEFAULTS.query_max_length
    # max_seq_length written into the saved model (what `ceindex build` uses); None = max_length. Going past the
    # training length hurts: on SciFact test DE-2 CE scored nDCG@10 0.40 at 128 tokens but 0.25 at 256.
    save_max_length: int | None = _DEFAULTS.save_max_length
    scale: float = 20.0
    teacher: bool = _DEFAULTS.teacher
    margin_weight: float = _DEFAULTS.margin_weight
    teacher_max_length: int = 192
    teacher_batch_size: int = 32
    negatives_depth: int = 10  # a hard negative is drawn from the BM25 top-N minus the relevant documents
    seed: int = _DEFAULTS.seed
    held_out: float = _DEFAULTS.held_out
    patience: int = _DEFAULTS.patience  # epochs without a held-out improvement before stopping
    eval_docs: int = _DEFAULTS.eval_docs  # documents searched for held-out early stopping (0 = the whole corpus)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (in-batch negatives need company), got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must be a fraction in [0, 1), got {self.warmup}"),
            (self.max_length >= 8 and self.query_max_length >= 8 and self.saved_max_length >= 8,
             "max lengths must be >= 8 tokens"),
            (0 <= self.held_out <= 0.5, f"--held-out must be a fraction in [0, 0.5], got {self.held_out}"),
            (self.negatives_depth >= 1, f"negatives depth must be >= 1, got {self.negatives_depth}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.eval_docs >= 0, f"eval docs must be >= 0 (0 = whole corpus), got {self.eval_docs}"),
            (self.margin_weight >= 0, f"margin weight must be >= 0, got {self.margin_weight}"),
            (self.de_weight >= 0, f"--de-weight must be >= 0, got {self.de_weight}"),
            (self.pseudo_queries >= 0, f"--pseudo-queries must be >= 0 (0 = all), got {self.pseudo_queries}"),
            (self.max_triples >= 0, f"--max-triples must be >= 0 (0 = all), got {self.max_triples}"),
            (self.max_minutes is None or self.max_minutes > 0, f"--max-minutes must be > 0, got {self.max_minutes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def saved_max_length(self) -> int:
        return self.save_max_length if self.save_max_length is not None else self.max_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def source_specs(self) -> list[Any]:
        """The training sources these settings name (``ceindex.distill.data.SourceSpec``)."""
        from ceindex.distill.data import specs_from

        return specs_from(self.data_dir, self.split, self.triples, self.drop_sources, self.corpus,
                          self.max_triples, self.pseudo_queries)


def student_config(settings: DistillConfig, source: str) -> StudentConfig:
    """The student described by the ``distill`` settings, copying from ``source`` (``--init-from random``: the
    source's architecture, nothing copied)."""
    if settings.init_from == "random":
        return StudentConfig(source=source, layers=settings.layers, copy=0, random_init=True)
    return StudentConfig(source=source, layers=settings.layers, copy=settings.copy)


def train_config(settings: DistillConfig, data_dir: str | None) -> TrainConfig:
    """The training recipe: the ``distill`` settings' values for the keys they hold, the fixed defaults for the rest."""
    given = {f.name for f in fields(DistillConfig)}
    values = {f.name: getattr(settings, f.name) for f in fields(TrainConfig) if f.name in given}
    return TrainConfig(data_dir=data_dir, **values)
