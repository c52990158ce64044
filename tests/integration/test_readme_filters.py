"""The README's "Filters and pages" examples run as written (embedded backend, the packaged sample): every
``ceindex`` line through the CLI, the Python block, the YAML block and the curl body against a served app."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from ceindex.cli import cli
from ceindex.config import load_settings
from search_pipeline import SearchPipeline
from search_pipeline.server import create_app
from tests.conftest import REPO, SAMPLE
from tests.serving import serving

TOPICS = {json.loads(line)["_id"]: json.loads(line)["topic"]
          for line in (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").splitlines()}


def section_blocks() -> list[tuple[str, str]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Filters and pages\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def table_ids(output: str) -> list[str]:
    return re.findall(r"^\s*\d+\s+(d\d\d)\s", output, flags=re.M)


def test_the_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CEINDEX_HOME", str(tmp_path / "home"))
    blocks = section_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "yaml", "python", "bash"]
    commands = [line for line in blocks[0][1].splitlines() if line.startswith("ceindex ")]
    assert [c.split()[1] for c in commands] == ["build", "search", "search", "eval"]
    for command in commands:
        result = CliRunner().invoke(cli, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
        if command.startswith("ceindex search"):
            ids = table_ids(result.output)
            assert ids, result.output
            if '"biology"' in command:
                assert {TOPICS[i] for i in ids} == {"biology"}
            else:
                assert len(ids) == 3 and {TOPICS[i] for i in ids} <= {"physics", "earth"}
                assert re.findall(r"^\s*(\d+)\s+d\d\d", result.output, flags=re.M) == ["4", "5", "6"]
        if command.startswith("ceindex eval"):
            assert "nDCG@10" in result.output
            out = tmp_path / "eval"
            again = CliRunner().invoke(cli, [*shlex.split(command)[1:], "--out", str(out), "--no-progress"])
            assert again.exit_code == 0, again.output
            for run in ("bm25", "hybrid-rrf"):  # every document every system returned passes the filter
                docs = {line.split()[2] for line in (out / "runs" / f"{run}.trec").read_text().splitlines()}
                assert docs and {TOPICS[d] for d in docs} == {"biology"}
    settings = load_settings(data=yaml.safe_load(blocks[1][1]))
    assert settings.build.fields == {"topic": "keyword", "words": "integer"} and settings.search.max_depth == 200

    namespace: dict[str, Any] = {}
    exec(compile(blocks[2][1], "README.md (Python example)", "exec"), namespace)  # noqa: S102 - our own README
    page = namespace["page_2"]
    assert [h.rank for h in page.hits] == [4, 5, 6] and {h.metadata["topic"] for h in page.hits} == {"biology"}
    namespace["pipeline"].close()

    curl = blocks[3][1].strip()
    body = json.loads(shlex.split(curl)[shlex.split(curl).index("-d") + 1])
    pipeline = SearchPipeline.from_config({"index": "tiny"})
    with serving(create_app(pipeline)) as url:
        response = httpx.post(f"{url}/search", json=body, timeout=120)
    assert response.status_code == 200, response.text
    hits = response.json()["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [4, 5, 6] and "biology" not in {TOPICS[h["id"]] for h in hits}
