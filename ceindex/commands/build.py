"""``ceindex build``: index a corpus (BM25 text + encoder vectors) into OpenSearch or the embedded store."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ceindex.commands._options import settings_from_params, settings_options
from ceindex.data.slices import parse_slice
from ceindex.errors import ConfigError
from ceindex.redact import redact


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="A BEIR folder; its corpus.jsonl is indexed.")
@click.option("--corpus", "corpus_file", type=click.Path(dir_okay=False), default=None,
              help="A corpus file: .jsonl, .csv or .tsv, optionally .gz (see --id-field/--text-field/--title-field).")
@click.option("--rejects", "rejects_file", type=click.Path(dir_okay=False), default=None,
              help="Where rejected rows are written as JSONL (default: $CEINDEX_HOME/rejects/INDEX.jsonl).")
@click.option("--prune", is_flag=True, help="After a successful build, delete the older indexes behind the alias.")
@click.option("--finalize", is_flag=True,
              help="Finish a sliced build (--slice I/N): once all N slices are done, seal the index, run the count "
                   "check and move the alias. Give the slices' corpus and flags, without --slice.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@settings_options("opensearch", "encoder", "build", encoder_spec=True)
def build_command(data_dir: str | None, corpus_file: str | None, rejects_file: str | None, prune: bool,
                  finalize: bool, as_json: bool, progress: bool, **params: Any) -> None:
    """Read a corpus, embed every document, and write BM25 text plus its vector into an index.

    \b
    Examples:
      ceindex build --data ./scifact --index scifact --encoder ce:./models/my-ce,layer=1
      ceindex build --corpus docs.csv --id-field id --text-field body --index docs \\
                    --opensearch https://localhost:9200 --ca-certs root-ca.pem

    Without --opensearch the index is written to the embedded store under $CEINDEX_HOME.
    Each build goes into a fresh NAME-<timestamp> index; NAME is then pointed at it, so
    searches never see a half-built index. Rerunning the same command after a crash resumes.
    Bad rows are reported (file, line, reason) and the good ones still indexed.

    \b
    NAME moves to the new build only when it is good; otherwise the build is kept
    unpublished, NAME keeps serving what it served, and the exit status is 1:
      - any row rejected        -> fix the rows, or rerun the same command with --allow-rejects
      - 0 documents indexed     -> check --text-field/--id-field, or pass --allow-empty
      - count check failed      -> rerun the same command (it builds a new index)
    Rerunning a held-back build with the allow flag publishes it without encoding again.
    One build of an index runs at a time; a second one stops with an error naming the first.

    \b
    Parallel builders: N processes or machines each embed and write one slice
    (rows whose id hashes to I) into the same index; each slice resumes on its
    own; --finalize checks the count and moves the alias once all N are done:
      # on machine I of 4 (I = 1..4), same corpus file, encoder and cluster:
      ceindex build --corpus msmarco.jsonl --index msmarco --cluster https://os:9200 \\
                    --encoder ce:./models/my-ce,layer=1 --slice I/4
      # once all four have printed "slice I/4 complete", on any one machine:
      ceindex build --corpus msmarco.jsonl --index msmarco --cluster https://os:9200 --finalize
    A killed slice resumes when its command is rerun. A slice with other encoder
    settings than the build's, or another N, is refused; --finalize is refused
    while a slice is unfinished, naming it. The embedded store takes slices from
    processes on one machine (they share the $CEINDEX_HOME folder).
    """
    from ceindex.backends import open_backend
    from ceindex.data.corpus import corpus_path
    from ceindex.models import load_encoder
    from indexer.build import build_index
    from indexer.slices import build_slice, finalize_slices

    settings = settings_from_params(params)
    corpus = corpus_path(data_dir, corpus_file)
    spec = parse_slice(settings.build.slice) if settings.build.slice else None
    if finalize and spec is not None:
        raise ConfigError("--finalize finishes all the slices of a build: give it the slices' flags without --slice")
    if prune and spec is not None:
        raise ConfigError("--prune deletes older builds once the alias has moved, which only --finalize does: give "
                          "--prune to the finalize, not to a slice")
    name = settings.index if spec is None else f"{settings.index}.{spec.key}"
    rejects = Path(rejects_file) if rejects_file else settings.home_path / "rejects" / f"{name}.jsonl"
    backend = open_backend(settings)
    try:
        if finalize:
            summary = finalize_slices(backend, corpus, settings.index, settings.build, prune=prune)
        elif spec is not None:
            summary = build_slice(backend, load_encoder(settings.encoder, settings.export_root), corpus, settings.index, settings.build,
                                  spec, rejects_path=rejects, progress=progress)
        else:
            summary = build_index(backend, load_encoder(settings.encoder, settings.export_root), corpus, settings.index, settings.build,
                                  rejects_path=rejects, prune=prune, progress=progress)
    finally:
        backend.close()
    if spec is not None:
        _report_slice(summary, as_json)
        return
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        target = redact(settings.opensearch.url) if settings.opensearch.url else f"embedded store {settings.home_path}"
        click.echo(f"index {summary.index} -> {summary.physical} on {target}")
        if summary.resumed_from:
            click.echo(f"resumed after {summary.resumed_from} committed records")
        if summary.fields:
            how = ("inferred from the first rows; pin them with these flags or build.fields"
                   if summary.fields_inferred else "declared")
            click.echo(f"filterable fields ({how}): " + " ".join(f"--field {n}={t}" for n, t in summary.fields.items()))
        for name, why in summary.fields_skipped.items():
            click.echo(f"  field {name} left untyped (not filterable): {why}")
        click.echo(f"read {summary.read}  indexed {summary.indexed}  rejected {summary.rejected}  "
                   f"in {summary.seconds:.1f}s ({summary.docs_per_s:.1f} docs/s; read {summary.read_s:.1f}s, "
                   f"encode {summary.encode_s:.1f}s, write {summary.write_s:.1f}s)")
        for reason, count in sorted(summary.rejects_by_reason.items()):
            click.echo(f"  rejected {count}: {reason}")
        if summary.rejects_file:
            click.echo(f"rejected rows: {summary.rejects_file}")
        click.echo("count check: " + ("ok" if summary.count_ok else
                   f"FAILED (index holds {summary.indexed}, expected {summary.read - summary.rejected})"))
        if summary.published:
            click.echo(f"published: {summary.index} now serves {summary.physical}")
        else:
            click.echo(f"NOT published: {summary.held_back}")
        for name in summary.pruned:
            click.echo(f"pruned {name}")
    if not summary.published:
        sys.exit(1)


def _report_slice(summary: Any, as_json: bool) -> None:
    """One slice's outcome: its counts, and which slices the finalize still waits for (exit 0: the slice is done)."""
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    click.echo(f"slice {summary.slice} of {summary.index} -> {summary.physical} complete")
    if summary.resumed_from:
        click.echo(f"resumed after {summary.resumed_from} committed corpus rows")
    click.echo(f"this slice: read {summary.read}  rejected {summary.rejected}  encoded now {summary.encoded}  "
               f"in {summary.seconds:.1f}s (encode {summary.encode_s:.1f}s, write {summary.write_s:.1f}s)")
    for reason, count in sorted(summary.rejects_by_reason.items()):
        click.echo(f"  rejected {count}: {reason}")
    if summary.rejects_file:
        click.echo(f"rejected rows: {summary.rejects_file}")
    if summary.slices_pending:
        click.echo("still to do before --finalize: slice " + ", ".join(summary.slices_pending))
    else:
        click.echo("all slices are done: run the same command with --finalize instead of --slice to publish")
