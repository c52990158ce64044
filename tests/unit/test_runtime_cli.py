"""`ceindex build --runtime` and `ceindex search --rerank-runtime` on the embedded store: the exports land under
--home, the index records the runtime, and the hits equal torch's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ceindex.backends.embedded import EmbeddedBackend
from ceindex.cli import cli
from tests.conftest import SAMPLE


def test_build_and_search_with_runtimes(tiny_ce_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEINDEX_CE_MODEL", str(tiny_ce_dir))
    monkeypatch.delenv("CEINDEX_HOME", raising=False)
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["-q", *args, "--home", str(home)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    built = json.loads(run("build", "--data", str(SAMPLE), "--max-length", "64", "--runtime", "onnx", "--json",
                           "--no-progress"))
    assert built["indexed"] == 30 and built["published"] is True
    searches = {runtime: json.loads(run("search", "--k", "5", "--rerank-max-length", "64", "--rerank-runtime",
                                        runtime, "--json", "battery"))[0]["hits"]
                for runtime in ("torch", "openvino")}
    assert [h["id"] for h in searches["openvino"]] == [h["id"] for h in searches["torch"]]
    for ours, theirs in zip(searches["openvino"], searches["torch"]):
        assert ours["rerank_score"] == pytest.approx(theirs["rerank_score"], rel=1e-4, abs=1e-5)
    exports = sorted(p.name.rsplit("-", 1)[0] for p in (home / "cache" / "exports").iterdir())
    assert exports == ["hidden-L1-onnx-float32", "logits-onnx-float32", "logits-openvino-float32"]
    backend = EmbeddedBackend(home)
    try:
        assert backend.info("ceindex").encoder.runtime == "onnx"  # the build recorded it; queries reuse it
    finally:
        backend.close()
