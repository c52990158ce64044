from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ceindex.config import apply_overrides, defaults_yaml, load_settings, opensearch_credentials
from ceindex.errors import ConfigError
from ceindex.models.config import EncoderConfig, parse_encoder_spec


def test_defaults_yaml_round_trips_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(defaults_yaml())
    settings = load_settings(path)
    assert settings == load_settings(data={})
    assert settings.search.rrf_k == 60 and settings.search.recall_n == 100 and settings.search.rerank_top == 50


def test_every_key_documents_a_flag() -> None:
    for line in defaults_yaml().splitlines()[1:]:
        if line.rstrip().endswith(":") or line.startswith("# read by "):  # a section, or the command it is for
            continue
        assert "# --" in line, line


def test_command_sections_round_trip_and_are_typed() -> None:
    settings = load_settings(data={"layers": {"layers": "0,2", "baseline": "default"},
                                   "distill": {"epochs": 5, "lr": 1, "threads": 2}})
    assert settings.layers.layers == "0,2" and settings.layers.baseline == "default" and settings.layers.split == "test"
    assert settings.distill.epochs == 5 and settings.distill.lr == 1.0 and settings.distill.threads == 2
    assert settings.distill.split == "train" and settings.distill.save_max_length is None
    with pytest.raises(ConfigError, match=r"distill\.threads must be int"):  # a None default still has a type
        load_settings(data={"distill": {"threads": "four"}})
    with pytest.raises(ConfigError, match=r"layers\.max_length must be int"):
        load_settings(data={"layers": {"max_length": "long"}})


def test_unknown_key_names_section_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"search": {"rrf_kk": 3}}))
    with pytest.raises(ConfigError, match=r"search\.rrf_kk"):
        load_settings(path)


def test_wrong_type_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search\.recall_n must be int"):
        load_settings(data={"search": {"recall_n": "many"}})


def test_secrets_are_refused_in_the_file() -> None:
    with pytest.raises(ConfigError, match="CEINDEX_OPENSEARCH_USER"):
        load_settings(data={"opensearch": {"password": "x"}})


def test_credentials_need_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CEINDEX_OPENSEARCH_PASSWORD", raising=False)
    monkeypatch.setenv("CEINDEX_OPENSEARCH_USER", "admin")
    with pytest.raises(ConfigError, match="only one is set"):
        opensearch_credentials()
    monkeypatch.setenv("CEINDEX_OPENSEARCH_PASSWORD", "pw")
    assert opensearch_credentials() == ("admin", "pw")


def test_overrides_apply_by_dotted_key() -> None:
    settings = apply_overrides(load_settings(data={"index": "a"}), {"index": "b", "encoder.layer": 3, "search.fusion": None})
    assert settings.index == "b" and settings.encoder.layer == 3 and settings.search.fusion == "rrf"


def test_encoder_spec_parsing() -> None:
    config = parse_encoder_spec("ce:/models/x,layer=2,pooling=cls,input=single")
    assert config == EncoderConfig(kind="ce-layer", model="/models/x", layer=2, pooling="cls", input_mode="single")
    assert parse_encoder_spec("de").kind == "dual"
    with pytest.raises(ConfigError, match="kind 'xx'"):
        parse_encoder_spec("xx:model")
    with pytest.raises(ConfigError, match="layer must be an integer"):
        parse_encoder_spec("ce,layer=two")
    with pytest.raises(ConfigError, match="pooling must be one of"):
        parse_encoder_spec("ce,pooling=max")


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CEINDEX_HOME", str(tmp_path))
    assert load_settings(data={}).home_path == tmp_path


def test_yaml_exponent_floats_without_a_dot_are_floats() -> None:
    """PyYAML reads 1e-5 (no dot) as a string: `distill.lr: 1e-5` was refused as 'must be float'."""
    import yaml

    from ceindex.config import load_settings

    settings = load_settings(data=yaml.safe_load("distill:\n  lr: 1e-5\n"))
    assert settings.distill.lr == 1e-5
