"""``ceindex distill``: train a 2-layer dual encoder from a cross-encoder's first layer(s)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options


def _source(init_from: str, model: str) -> str:
    if init_from in ("ce", "random"):  # random: the CE's architecture and tokenizer, no weights copied
        return model
    if init_from == "baseline":
        from ceindex.models.dual import baseline_de_path

        return str(baseline_de_path())
    return init_from


@click.command(context_settings={"max_content_width": 110})
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False),
              help="BEIR folder: trains on qrels/<--split>.tsv (with --split none: on its corpus alone, label-free).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the trained model (a sentence-transformers folder + ceindex_distill.json).")
@settings_options("distill", top_level=())
@click.option("--restart", is_flag=True, help="Discard an earlier (interrupted or finished) run in --out.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the training record (ceindex_distill.json) as JSON.")
def distill_command(data_dir: str | None, out_dir: str, restart: bool, progress: bool, as_json: bool,
                    **params: Any) -> None:
    """Turn a cross-encoder into a small, fast dual encoder for `ceindex build`.

    The student has --layers transformer layers: its word embeddings and first --copy layer(s)
    are copied from the cross-encoder (--init-from), the rest start random. It learns from any
    mix of these sources (each with a BM25 hard negative per pair and in-batch negatives):

    \b
      --data DIR --split train   labelled: a BEIR split's (query, relevant document) pairs.
                                 Needs human relevance labels (qrels) for your corpus.
      --triples FILE[,FILE]      labelled: query<TAB>positive[<TAB>negative] rows (.tsv/.jsonl[.gz]),
                                 e.g. MS MARCO triples; --drop-sources leaves named sources out.
      --corpus PATH              label-free: pseudo-queries made from your documents (titles, one
      (or --data DIR --split none)  sentence per document); the teachers supply the labels.

    Teachers: the cross-encoder itself (--teacher, the default: its score margins) and,
    optionally, --teacher-de MODEL, a slower dual encoder whose embeddings the student copies
    (their outputs are computed once and cached). A slice of the queries (--held-out) picks the
    best epoch; --max-minutes bounds the time and keeps the best model so far. Interrupted or out
    of time: rerun the same command and it continues. The result is a sentence-transformers folder.

    \b
    Examples:
      ceindex distill --model ./ce-model --data ./scifact --out ./models/de2ce
      ceindex distill --model ./ce-model --corpus ./my-docs.jsonl --teacher-de baseline \\
          --max-minutes 30 --out ./models/de2ce-label-free
      ceindex build --data ./scifact --index scifact-de2 --encoder de:./models/de2ce
    \b
    Control runs (same recipe): --init-from baseline (layers of a dual encoder), --init-from random.
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
    _print_epochs(meta)
    click.echo(f"wall time {meta['wall_time_s']['total']:.0f} s; model: {out_dir}")
    if not meta.get("complete", True):
        click.echo("the time budget (--max-minutes) was spent: the best model so far is written; "
                   "rerun the same command to continue training")
    click.echo(f"next: ceindex build --data DIR --index NAME --encoder de:{Path(out_dir)}")


def _print_epochs(meta: dict[str, Any]) -> None:
    for epoch in meta["epochs"]:
        held = epoch.get("held_out") or {}
        mark = " *" if epoch["epoch"] == meta["best_epoch"] else ""
        part = " (partial: time budget)" if epoch.get("partial") else ""
        click.echo(f"epoch {epoch['epoch']}{part}: loss {epoch['loss']:.4f}"
                   + (f", held-out nDCG@10 {held['ndcg@10']:.4f}" if held else "") + f", {epoch['seconds']:.0f} s{mark}")
    before = meta.get("held_out_before_training")
    if before:
        click.echo(f"held-out nDCG@10 before training: {before['ndcg@10']:.4f}")
