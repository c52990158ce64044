"""``ceindex config``: print every configuration key with its default, flag and meaning."""
from __future__ import annotations

import json

import click

from ceindex.config import Settings, defaults_yaml, load_settings


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Show the effective settings of this YAML file instead of the defaults.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of annotated YAML.")
def config_command(config_path: str | None, as_json: bool) -> None:
    """Print the configuration keys, their defaults and the flag that overrides each.

    Save the output as ceindex.yaml, edit it, and pass it to any command with --config.
    Cluster credentials are never in the file: set CEINDEX_OPENSEARCH_USER and
    CEINDEX_OPENSEARCH_PASSWORD.
    """
    settings = load_settings(config_path) if config_path else Settings()
    if as_json:
        click.echo(json.dumps(settings.to_dict(), indent=2))
    elif config_path:
        import yaml

        click.echo(yaml.safe_dump(settings.to_dict(), sort_keys=False))
    else:
        click.echo(defaults_yaml(), nl=False)
