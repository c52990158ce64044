"""Click options generated from the configuration dataclasses, so flags and YAML keys never drift apart.

Every option that sets a configuration key is made here from the field's metadata (flag, help, choices, metavar)
and is a ``SettingOption`` that knows its key; a command declares by hand only what is not configuration (its
inputs, outputs and output format).
"""
from __future__ import annotations

from dataclasses import Field, fields, replace
from typing import Any, Callable

import click

from ceindex.config import SECTIONS, Settings, apply_overrides, field_default, load_settings, value_type
from ceindex.filters import parse_field_flags
from ceindex.models.config import EncoderConfig, parse_encoder_spec

TOP_LEVEL = ("index", "home")


class SettingOption(click.Option):
    """An option generated from a settings field; ``setting`` is its dotted key, e.g. ``search.fusion``."""

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting


def option_help(dotted: str, f: Field) -> str:
    """The help text of the option generated for field ``f`` at key ``dotted``."""
    return f"{f.metadata['help']} [config {dotted}; default {field_default(f)}]"


def _option_for(cls: type, dotted: str, f: Field) -> Callable:
    flag, param = f.metadata["flag"], dotted.replace(".", "__")
    common: dict[str, Any] = {"cls": SettingOption, "setting": dotted, "default": None, "help": option_help(dotted, f)}
    if "envvar" in f.metadata:  # e.g. CEINDEX_CLUSTER_URL: between the config file and the flag
        common.update(envvar=f.metadata["envvar"], show_envvar=True)
    if f.metadata.get("aliases"):  # old names that keep working, e.g. --opensearch for --cluster
        return click.option(flag, *f.metadata["aliases"], param, type=value_type(cls, f), **common)
    if "/" in flag:
        return click.option(flag, param, **common)
    if value_type(cls, f) is dict:  # a mapping setting (build.fields): a repeatable NAME=VALUE flag
        return click.option(flag, param, multiple=True, type=str, metavar=f.metadata.get("metavar"), **common)
    kind: Any = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else value_type(cls, f)
    return click.option(flag, param, type=kind, metavar=f.metadata.get("metavar"), **common)


def settings_options(*sections: str, encoder_spec: bool = False, top_level: tuple[str, ...] = TOP_LEVEL) -> Callable:
    """Decorate a command with ``--config``, the top-level keys ``top_level`` (``--index``, ``--home``) and the
    options of ``sections``."""

    def decorate(command: Callable) -> Callable:
        options: list[Callable] = [
            click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                         help="YAML configuration file (see `ceindex config`); flags override it."),
        ]
        for f in fields(Settings):
            if f.name in top_level:
                options.append(_option_for(Settings, f.name, f))
        for section in sections:
            cls = SECTIONS[section]
            options += [_option_for(cls, f"{section}.{f.name}", f) for f in fields(cls)]
        if encoder_spec:
            options.append(click.option(
                "--encoder", "encoder_spec", default=None,
                help="Encoder shorthand KIND[:MODEL][,key=value...], e.g. 'ce:PATH,layer=1' or 'de:PATH'. "
                     "Individual --layer/--pooling/... flags override it.",
            ))
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def settings_from_params(params: dict[str, Any]) -> Settings:
    """Build Settings from a command's keyword arguments (consumes the settings-related ones)."""
    settings = load_settings(params.pop("config_path", None))
    spec = params.pop("encoder_spec", None)
    if spec:
        settings = replace(settings, encoder=parse_encoder_spec(spec, base=settings.encoder))
    overrides: dict[str, Any] = {}
    for key in list(params):
        if key in TOP_LEVEL or "__" in key:
            overrides[key.replace("__", ".")] = params.pop(key)
    if overrides.get("build.fields") is not None:  # repeated --field NAME=TYPE; none given = the file's value
        overrides["build.fields"] = parse_field_flags(overrides["build.fields"]) or None
    return apply_overrides(settings, overrides)


__all__ = ["SettingOption", "option_help", "settings_options", "settings_from_params", "EncoderConfig"]
