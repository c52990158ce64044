"""``ceindex layers``: find the cross-encoder layer whose hidden states embed best."""
from __future__ import annotations

import json
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options
from ceindex.errors import ConfigError


def parse_layers(spec: str) -> list[int]:
    """``"0-6"``, ``"1,2,5"`` or ``"0-2,5"`` -> sorted unique layer numbers."""
    layers: set[int] = set()
    try:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            low, sep, high = part.partition("-")
            start, end = int(low), int(high) if sep else int(low)
            if start < 0 or end < start:
                raise ValueError
            layers.update(range(start, end + 1))
    except ValueError:
        raise ConfigError(f"--layers {spec!r}: expected ranges and lists of layers >= 0, e.g. 0-6 or 0,1,3") from None
    if not layers:
        raise ConfigError("--layers is empty; e.g. --layers 0-6")
    return sorted(layers)


def format_table(report: dict) -> str:
    head = f"{'layer':>8}  {'nDCG@10':>8}  {'MRR@10':>8}  {'Hits@10':>8}  {'R@100':>8}"
    rows = [head, "-" * len(head)]

    def row(name: str, m: dict) -> str:
        return f"{name:>8}  {m['ndcg@10']:8.3f}  {m['mrr@10']:8.3f}  {m['hit_rate@10']:8.3f}  {m['recall@100']:8.3f}"

    for score in report["layers"]:
        marker = " *" if score["layer"] == report["best_layer"] else ""
        rows.append(row(str(score["layer"]), score["metrics"]) + marker)
    if report.get("baseline"):
        rows.append(row("DE", report["baseline"]["metrics"]))
    return "\n".join(rows)


@click.command(context_settings={"max_content_width": 110})
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.")
@settings_options("layers", top_level=())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write layers.json and layers.png (metrics per layer) into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
def layers_command(data_dir: str, out_dir: str | None, as_json: bool, **params: Any) -> None:
    """Score every layer of a cross-encoder as a first-stage embedder on a BEIR dataset.

    Each text is fed to the cross-encoder (paired with itself by default), the hidden states of
    each requested layer are mean-pooled into one vector, and the split's queries are searched
    exactly (cosine) against the corpus. One forward pass through the deepest requested layer
    serves all layers. Early layers usually win; the best layer by nDCG@10 is the one to give
    `ceindex build --layer`.

    \b
    Example:
      ceindex layers --model ./ce-model --data ./scifact --layers 0-6 --baseline default --out runs/layers
    """
    from ceindex.layers import run_layer_sweep

    cfg = settings_from_params(params).layers
    report = run_layer_sweep(
        cfg.resolved_model, data_dir, cfg.split, parse_layers(cfg.layers), cfg.input_mode, cfg.pooling,
        cfg.max_length, cfg.batch_size, cfg.baseline, device=cfg.device, dtype=cfg.dtype, show_progress=not as_json,
    )
    if out_dir:
        json_path, png_path = report.write(out_dir)
        click.echo(f"wrote {json_path} and {png_path}", err=True)
    data = report.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{data['model']} on {data['data']} ({data['split']}: {data['n_queries']} queries, "
               f"{data['n_docs']} docs), {cfg.input_mode}, {cfg.pooling} pooling, max_length {data['max_length']}")
    click.echo(format_table(data))
    best = next(s for s in data["layers"] if s["layer"] == data["best_layer"])
    click.echo(f"best layer: {data['best_layer']} (nDCG@10 {best['metrics']['ndcg@10']:.3f})")
