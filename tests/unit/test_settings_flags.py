"""Every command's configuration flags are generated from the one settings model (``ceindex/config.py``).

A flag declared by hand for a setting (its own help text, its own default, its own choice list) is what lets
defaults and choices drift apart; these tests fail on one, on a command missing a flag of its settings, and on a
flag that ``ceindex config`` does not document.
"""
from __future__ import annotations

import ast
import json
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
import yaml
from click.testing import CliRunner

from ceindex.cli import cli
from ceindex.commands._options import TOP_LEVEL, SettingOption, option_help
from ceindex.config import SECTIONS, Settings, load_settings
from ceindex.errors import ConfigError
from ceindex.models.config import EncoderConfig, default_ce_model

REPO = Path(__file__).resolve().parents[2]

# the settings each command takes flags for: top-level keys and whole sections
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "build": (*TOP_LEVEL, "opensearch", "encoder", "build"),
    "search": (*TOP_LEVEL, "opensearch", "search"),
    "serve": (*TOP_LEVEL, "opensearch", "search", "serve"),
    "eval": (*TOP_LEVEL, "opensearch", "search"),
    "layers": ("layers",),
    "distill": ("distill",),
    "config": (),
}
# hand-declared options of a command that share a flag with a setting of ANOTHER command; each is a run argument of
# its own command, not that setting
SHARED_FLAGS: dict[tuple[str, str], str] = {
    ("eval", "--split"): "the qrels split of this evaluation run (layers.split/distill.split are other commands')",
    ("eval", "--baseline"): "the name of the system the others are tested against, not a model",
    ("build", "--corpus"): "the corpus file to index (distill.corpus is the label-free training corpus)",
}


def _field(dotted: str) -> tuple[type, Field]:
    section, _, name = dotted.rpartition(".")
    cls = SECTIONS[section] if section else Settings
    return cls, next(f for f in fields(cls) if f.name == name)


def _all_settings() -> Iterator[tuple[str, Field]]:
    for f in fields(Settings):
        if f.name not in SECTIONS:
            yield f.name, f
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            yield f"{section}.{f.name}", f


def _flags(flag: str) -> list[str]:
    return [part.strip() for part in flag.split("/")]


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def test_every_command_is_placed() -> None:
    assert set(cli.commands) == set(COMMAND_SETTINGS), "add the new command to COMMAND_SETTINGS"


@pytest.mark.parametrize("name", sorted(COMMAND_SETTINGS))
def test_no_settings_flag_is_declared_by_hand(name: str) -> None:
    """An option that uses a settings field's flag was generated from that field: same help, no default of its
    own, the field's choices."""
    setting_flags: dict[str, list[str]] = {}
    for dotted, f in _all_settings():
        for flag in _flags(f.metadata["flag"]):
            setting_flags.setdefault(flag, []).append(dotted)
    for option in _options(cli.commands[name]):
        for flag in [*option.opts, *option.secondary_opts]:
            if flag not in setting_flags or (name, flag) in SHARED_FLAGS:
                continue
            assert isinstance(option, SettingOption), f"ceindex {name} declares {flag} by hand; it is {setting_flags[flag]}"
            assert option.setting in setting_flags[flag], (name, flag, option.setting)
            cls, f = _field(option.setting)
            assert option.help == option_help(option.setting, f), (name, flag)
            assert option.default is None, f"ceindex {name} {flag}: the default belongs to {option.setting}"
            if "choices" in f.metadata:
                assert isinstance(option.type, click.Choice)
                assert tuple(option.type.choices) == f.metadata["choices"], (name, flag)
            else:
                assert not isinstance(option.type, click.Choice), f"{option.setting} has no choices in its metadata"


@pytest.mark.parametrize("name", sorted(COMMAND_SETTINGS))
def test_each_command_has_every_flag_of_its_settings(name: str) -> None:
    expected: set[str] = set()
    for part in COMMAND_SETTINGS[name]:
        expected |= {f"{part}.{f.name}" for f in fields(SECTIONS[part])} if part in SECTIONS else {part}
    generated = [o.setting for o in _options(cli.commands[name]) if isinstance(o, SettingOption)]
    assert sorted(generated) == sorted(expected)


def test_ceindex_config_lists_every_flag_of_every_command() -> None:
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0, result.output
    documented: dict[str, str] = {}
    section = ""
    for line in result.output.splitlines():
        if line.startswith("#"):
            continue
        if not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
            continue
        key, _, comment = line.strip().partition("  # ")
        name = key.partition(":")[0]
        documented[f"{section}.{name}" if line.startswith(" ") else name] = comment
    assert load_settings(data=yaml.safe_load(result.output)) == Settings()
    for name, command in cli.commands.items():
        for option in _options(command):
            if isinstance(option, SettingOption):
                _, f = _field(option.setting)
                assert documented.get(option.setting) == f"{f.metadata['flag']}: {f.metadata['help']}", (
                    f"ceindex config does not document {option.setting} ({name} {option.opts[0]})")


def test_config_json_holds_every_section() -> None:
    data = json.loads(CliRunner().invoke(cli, ["config", "--json"]).output)
    assert set(SECTIONS) <= set(data)
    assert data["layers"]["layers"] == "0-6" and data["distill"]["epochs"] == 3


def test_choices_are_defined_once() -> None:
    from search_pipeline.fusion import FUSIONS
    from search_pipeline.pipeline import validate_search_config

    _, fusion = _field("search.fusion")
    _, server_fusion = _field("search.server_fusion")
    assert fusion.metadata["choices"] is FUSIONS
    for choice in fusion.metadata["choices"]:
        validate_search_config(SECTIONS["search"](fusion=choice))
    for choice in server_fusion.metadata["choices"]:
        validate_search_config(SECTIONS["search"](server_fusion=choice))
    for bad in ({"fusion": "sum"}, {"server_fusion": "maybe"}):
        with pytest.raises(ConfigError, match="must be"):
            validate_search_config(SECTIONS["search"](**bad))
    for f in fields(EncoderConfig):
        if "choices" in f.metadata:
            EncoderConfig(**{f.name: f.metadata["choices"][-1]})
            with pytest.raises(ConfigError, match=f"{f.name} must be one of"):
                EncoderConfig(**{f.name: "nonsense"})


def test_model_config_stays_plain_data() -> None:
    """The model core (layer 1) holds flag metadata as plain dicts; it imports neither click nor ceindex.config."""
    tree = ast.parse((REPO / "ceindex" / "models" / "config.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m.split(".")[0] == "click" or m.startswith("ceindex.config"))}
    assert all({"flag", "help"} <= set(f.metadata) for f in fields(EncoderConfig))


# --- the generated flags of layers and distill reach the run with the old defaults ---------------------------
def _beir(tmp_path: Path) -> Path:
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    return data


def test_layers_flags_and_config_reach_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ceindex.layers

    calls: list[tuple[tuple, dict]] = []

    def sweep(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise ConfigError("stop here")

    monkeypatch.setattr(ceindex.layers, "run_layer_sweep", sweep)
    data = str(_beir(tmp_path))
    CliRunner().invoke(cli.commands["layers"], ["--data", data])
    args, kwargs = calls[-1]
    assert args == (default_ce_model(), data, "test", [0, 1, 2, 3, 4, 5, 6], "self-pair", "mean", 256, 32, None)
    assert kwargs == {"device": "auto", "dtype": "float32", "show_progress": True}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"layers": {"layers": "1-2", "pooling": "cls", "baseline": "default",
                                                 "model": "m"}}))
    CliRunner().invoke(cli.commands["layers"], ["--data", data, "--config", str(config), "--pooling", "mean",
                                                "--max-length", "64", "--dtype", "int8", "--json"])
    args, kwargs = calls[-1]
    assert args == ("m", data, "test", [1, 2], "self-pair", "mean", 64, 32, "default")
    assert kwargs == {"device": "auto", "dtype": "int8", "show_progress": False}


def test_distill_flags_and_config_reach_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ceindex.distill.train
    from ceindex.distill.config import StudentConfig, TrainConfig

    calls: list[tuple[tuple, dict]] = []

    def distill(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise ConfigError("stop here")

    monkeypatch.setattr(ceindex.distill.train, "distill", distill)
    monkeypatch.setenv("CEINDEX_HOME", str(tmp_path / "home"))
    data, out = str(_beir(tmp_path)), str(tmp_path / "out")
    CliRunner().invoke(cli.commands["distill"], ["--data", data, "--out", out, "--model", "ce"])
    (student, train, out_dir), kwargs = calls[-1]
    assert student == StudentConfig(source="ce", layers=2, copy=1)
    assert train == TrainConfig(data_dir=data, split="train", epochs=3, batch_size=32, lr=1e-4, max_length=128,
                                query_max_length=32, save_max_length=None, teacher=True, margin_weight=0.1, seed=42,
                                held_out=0.1, eval_docs=2000, patience=1)
    assert out_dir == out
    assert kwargs == {"teacher_model": "ce", "restart": False, "progress": True,
                      "cache_dir": tmp_path / "home" / "cache" / "distill"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"home": str(tmp_path / "h2"),
                                      "distill": {"epochs": 5, "copy": 2, "layers": 3, "teacher": False}}))
    CliRunner().invoke(cli.commands["distill"], ["--data", data, "--out", out, "--model", "ce", "--config", str(config),
                                                 "--epochs", "4", "--save-max-length", "96", "--restart"])
    (student, train, _), kwargs = calls[-1]
    assert student == StudentConfig(source="ce", layers=3, copy=2)
    assert (train.epochs, train.teacher, train.save_max_length) == (4, False, 96)
    assert kwargs["restart"] and kwargs["cache_dir"] == tmp_path / "h2" / "cache" / "distill"
