"""The ``ceindex`` command line. Errors are caught here, once, and printed as one actionable line."""
from __future__ import annotations

import logging
import sys

import click

from ceindex import __version__
from ceindex.errors import CeindexError
from ceindex.redact import RedactingFilter, redact


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CeindexError as exc:
            click.secho(f"error: {redact(str(exc))}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ceindex")
@click.option("-v", "--verbose", count=True, help="More log output: -v debug for ceindex, -vv also for the libraries.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """ceindex: use a cross-encoder as a fast first-stage retriever.

    \b
    Typical flow:
      ceindex layers  --data DIR          find the cross-encoder layer that embeds best
      ceindex build   --data DIR --index NAME --layer L
                                          BM25 text + early-layer vectors into an index
      ceindex search  --index NAME "query"  hybrid recall (BM25 + k-NN), then CE re-rank
      ceindex eval    --data DIR --index NAME   ranx metrics against qrels

    Without --opensearch URL everything runs on the embedded on-disk backend in $CEINDEX_HOME
    (default ~/.ceindex). Models default to Hugging Face hub ids; point CEINDEX_CE_MODEL /
    CEINDEX_DE_MODEL at local folders on machines without the hub.
    """
    level = logging.WARNING if quiet else (logging.INFO if not verbose else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for noisy in ("httpx", "transformers", "sentence_transformers", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    # each failed cluster request is logged there with a full traceback; ceindex logs one line per retry instead
    for chatty in ("opensearch", "elasticsearch", "elastic_transport", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)


def _register() -> None:
    from ceindex.commands.build import build_command
    from ceindex.commands.config import config_command
    from ceindex.commands.search import search_command
    from ceindex.commands.serve import serve_command
    from ceindex.commands.eval import eval_command

    cli.add_command(build_command, name="build")
    cli.add_command(config_command, name="config")
    cli.add_command(search_command, name="search")
    cli.add_command(serve_command, name="serve")
    cli.add_command(eval_command, name="eval")
    from ceindex.commands.distill import distill_command
    from ceindex.commands.layers import layers_command

    cli.add_command(layers_command, name="layers")
    cli.add_command(distill_command, name="distill")


_register()


def main() -> None:
    cli(prog_name="ceindex")


if __name__ == "__main__":
    main()
