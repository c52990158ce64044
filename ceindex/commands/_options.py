"""Click options generated from the configuration dataclasses, so flags and YAML keys never drift apart."""
from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any, Callable

import click

from ceindex.config import ENCODER_FLAGS, SECTIONS, Settings, apply_overrides, load_settings
from ceindex.models.config import (
    DEVICES,
    DTYPES,
    ENCODER_KINDS,
    INPUT_MODES,
    POOLINGS,
    EncoderConfig,
    parse_encoder_spec,
)

_CHOICES = {
    "encoder.kind": ENCODER_KINDS,
    "encoder.input_mode": INPUT_MODES,
    "encoder.pooling": POOLINGS,
    "encoder.device": DEVICES,
    "encoder.dtype": DTYPES,
    "search.fusion": ("rrf", "minmax"),
    "search.server_fusion": ("auto", "on", "off"),
    "search.rerank_dtype": DTYPES,
}


def _option_for(dotted: str, f: Any, flag: str, help_text: str) -> Callable:
    default = f.default if f.default is not MISSING else None
    param = dotted.replace(".", "__")
    if "/" in flag:
        return click.option(flag, param, default=None, help=f"{help_text} [config {dotted}; default {default}]")
    if dotted in _CHOICES:
        kind: Any = click.Choice(_CHOICES[dotted])
    elif isinstance(default, bool):
        kind = bool
    elif isinstance(default, int):
        kind = int
    elif isinstance(default, float):
        kind = float
    else:
        kind = str
    return click.option(flag, param, type=kind, default=None, help=f"{help_text} [config {dotted}; default {default}]")


def settings_options(*sections: str, encoder_spec: bool = False) -> Callable:
    """Decorate a command with ``--config``, ``--index``, ``--home`` and the options of ``sections``."""

    def decorate(command: Callable) -> Callable:
        options: list[Callable] = [
            click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                         help="YAML configuration file (see `ceindex config`); flags override it."),
        ]
        for f in fields(Settings):
            if f.name not in SECTIONS:
                options.append(_option_for(f.name, f, f.metadata["flag"], f.metadata["help"]))
        for section in sections:
            for f in fields(SECTIONS[section]):
                flag, help_text = (f.metadata["flag"], f.metadata["help"]) if "flag" in f.metadata else ENCODER_FLAGS[f.name]
                options.append(_option_for(f"{section}.{f.name}", f, flag, help_text))
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
        if key in ("index", "home") or "__" in key:
            overrides[key.replace("__", ".")] = params.pop(key)
    return apply_overrides(settings, overrides)


__all__ = ["settings_options", "settings_from_params", "EncoderConfig"]
