"""``ceindex distill``: train a 2-layer dual encoder from a cross-encoder's first layer(s)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options


def _source(init_from: str, model: str) -> str:
    if init_from == "ce":
        return model
    if init_from == "baseline":
        from ceindex.models.dual import baseline_de_path

        return str(baseline_de_path())
    return init_from


@click.command(context_settings={"max_content_width": 110})
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the trained model (a sentence-transformers folder + ceindex_distill.json).")
@settings_options("distill", top_level=())
@click.option("--restart", is_flag=True, help="Discard an earlier (interrupted or finished) run in --out.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the training record (ceindex_distill.json) as JSON.")
def distill_command(data_dir: str, out_dir: str, restart: bool, progress: bool, as_json: bool, **params: Any) -> None:
    """Turn a cross-encoder into a small, fast dual encoder for `ceindex build`.

    The student has --layers transformer layers: its word embeddings and first --copy layer(s)
    are copied from the cross-encoder, the rest start random. It is trained on the split's
    (query, relevant document) pairs with a BM25 hard negative each and in-batch negatives,
    and (with --teacher, the default) to reproduce the cross-encoder's score margins. A slice
    of the queries (--held-out) picks the best epoch. One checkpoint per epoch: if training is
    interrupted, rerun the same command and it continues. The result is a normal
    sentence-transformers folder.

    \b
    Examples:
      ceindex distill --model ./ce-model --data ./scifact --out ./models/de2ce
      ceindex build --data ./scifact --index scifact-de2 --encoder de:./models/de2ce
    \b
    Control run (same recipe, layers copied from a dual encoder instead):
      ceindex distill --model ./ce-model --data ./scifact --init-from baseline --out ./models/de2-control
    """
    from ceindex.distill.config import student_config, train_config
    from ceindex.distill.train import distill

    settings = settings_from_params(params)
    cfg = settings.distill
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    ce = cfg.resolved_model
    student = student_config(cfg, _source(cfg.init_from, ce))
    train = train_config(cfg, data_dir)
    result = distill(student, train, out_dir, teacher_model=ce, restart=restart, progress=progress and not as_json,
                     cache_dir=settings.home_path / "cache" / "distill")
    meta = result.metadata
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    if not meta:
        click.echo(f"stopped before the last epoch; rerun the same command to continue ({out_dir})")
        return
    if result.already_done:
        click.echo(f"{out_dir} already holds this model (trained {meta.get('finished')}); --restart retrains it")
    for epoch in meta["epochs"]:
        held = epoch.get("held_out") or {}
        mark = " *" if epoch["epoch"] == meta["best_epoch"] else ""
        click.echo(f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}"
                   + (f", held-out nDCG@10 {held['ndcg@10']:.4f}" if held else "") + f", {epoch['seconds']:.0f} s{mark}")
    before = meta.get("held_out_before_training")
    if before:
        click.echo(f"held-out nDCG@10 before training: {before['ndcg@10']:.4f}")
    click.echo(f"wall time {meta['wall_time_s']['total']:.0f} s; model: {out_dir}")
    click.echo(f"next: ceindex build --data {data_dir} --index NAME --encoder de:{Path(out_dir)}")
