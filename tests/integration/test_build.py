"""`ceindex build` behaviours, each run on the embedded backend and on the real OpenSearch node."""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ceindex.backends import open_backend
from ceindex.config import BuildConfig, Settings
from ceindex.errors import BackendError, EncoderMismatchError
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from tests.conftest import CORE_BACKEND_PARAMS, SAMPLE, cluster_node
from tests.integration.conftest import build_settings


@pytest.fixture(params=CORE_BACKEND_PARAMS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return build_settings(request, tmp_path, "t")


def _corpus(tmp_path: Path, extra: list[str] | None = None) -> Path:
    lines = (SAMPLE / "corpus.jsonl").read_text().splitlines()
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines + (extra or [])) + "\n")
    return path


def _build(settings: Settings, encoder, corpus: Path, tmp_path: Path, **kw):
    backend = open_backend(settings)
    try:
        return build_index(backend, encoder, corpus, settings.index, settings.build,
                           rejects_path=tmp_path / "rejects.jsonl", progress=False, **kw)
    finally:
        backend.close()


def test_full_build_count_check_and_search(settings: Settings, encoder, tmp_path: Path) -> None:
    summary = _build(settings, encoder, _corpus(tmp_path), tmp_path)
    assert (summary.read, summary.indexed, summary.rejected) == (30, 30, 0)
    assert summary.count_ok and summary.rejects_file is None
    assert summary.assembler_fallback_batches == 0  # the tiny BERT tokenizer is mirrored
    backend = open_backend(settings)
    try:
        info = backend.info(settings.index)
        assert info.count == 30 and info.encoder == encoder.describe()
        assert backend.bm25(settings.index, ["lithium ions battery"], 5)[0][0].id == "d21"
        docs = backend.fetch(settings.index, ["d15", "nope"])
        assert list(docs) == ["d15"] and docs["d15"].title == "Black holes"
        vector = encoder.encode([docs["d15"].body])
        hits = backend.knn(settings.index, vector, 30)[0]
        assert len(hits) == 30 and hits[0].id == "d15" and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[1].score < 0.999
    finally:
        backend.close()


def test_summary_counts_the_batches_the_input_assembler_could_not_build(tiny_ce_dir: Path, tmp_path: Path) -> None:
    """A tokenizer the assembler cannot mirror (left-side truncation) is used batch by batch: the summary says how
    often, for this build only (the encoder's own count runs on across builds)."""
    model = tmp_path / "left-truncating-ce"
    shutil.copytree(tiny_ce_dir, model)
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"truncation_side": "left"}))
    encoder = load_encoder(EncoderConfig(model=str(model), layer=1, max_length=64, batch_size=4))
    settings = Settings(index=f"t{uuid.uuid4().hex[:8]}", home=str(tmp_path / "home"),
                        build=BuildConfig(encode_batch_docs=10, chunk_docs=4))
    first = _build(settings, encoder, _corpus(tmp_path), tmp_path)
    assert first.indexed == 30 and first.assembler_fallback_batches == 9  # 3 steps of 10 docs, 3 batches of <= 4
    again = _build(replace(settings, build=replace(settings.build, encode_batch_docs=30)), encoder,
                   _corpus(tmp_path), tmp_path)
    assert again.assembler_fallback_batches == 8 and encoder.fallback_batches == 17  # 30 docs, batches of <= 4


def test_bad_rows_are_rejected_and_good_rows_indexed(settings: Settings, encoder, tmp_path: Path) -> None:
    extra = ['{"_id": "x1", "text": ', '{"text": "no id here"}', '{"_id": "x2", "text": ""}',
             json.dumps({"_id": "d01", "text": "duplicate of d01"})]
    corpus = _corpus(tmp_path, extra)
    held = _build(settings, encoder, corpus, tmp_path)
    assert (held.read, held.indexed, held.rejected) == (34, 30, 4)
    assert held.count_ok and not held.published and "4 row(s) were rejected" in held.held_back
    rejects = [json.loads(line) for line in Path(held.rejects_file).read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0].split(" (")[0]) for r in rejects] == [
        (31, "malformed JSON"), (32, "missing id field '_id'"), (33, "empty text"), (34, "duplicate id")]
    # the same command with --allow-rejects publishes the held-back build without encoding anything again
    summary = _build(replace(settings, build=replace(settings.build, allow_rejects=True)), encoder, corpus, tmp_path)
    assert (summary.physical, summary.published, summary.encoded, summary.indexed) == (held.physical, True, 0, 30)
    backend = open_backend(settings)
    try:
        assert backend.fetch(settings.index, ["d01"])["d01"].title == "Photosynthesis"
    finally:
        backend.close()


def test_mismatched_encoder_is_refused_before_writing(settings: Settings, encoder, tiny_ce_dir: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    first = _build(settings, encoder, corpus, tmp_path)
    other = load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=2, max_length=64))
    with pytest.raises(EncoderMismatchError, match="layer: index has 1, requested 2"):
        _build(settings, other, corpus, tmp_path)
    backend = open_backend(settings)
    try:
        assert backend.info(settings.index).physical == first.physical
        assert backend.prune(settings.index) == []  # nothing new was created
    finally:
        backend.close()


def test_rebuild_moves_alias_and_prune_removes_old(settings: Settings, encoder, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    first = _build(settings, encoder, corpus, tmp_path)
    second = _build(settings, encoder, corpus, tmp_path, prune=True)
    assert second.physical != first.physical and second.pruned == [first.physical]
    backend = open_backend(settings)
    try:
        assert backend.info(settings.index).physical == second.physical
        assert backend.info(settings.index).count == 30
    finally:
        backend.close()


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_loses_and_doubles_nothing(settings: Settings, encoder, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Crash after two committed batches, then rerun the same build: it resumes and ends with the corpus."""
    settings = replace(settings, build=replace(settings.build, allow_rejects=True))
    corpus = _corpus(tmp_path, [json.dumps({"text": "bad row before the crash"})])
    backend = open_backend(settings)
    node = cluster_node(request, request.node.callspec.params["settings"])  # the real node, killed mid-build
    real_write, writes = backend.write, []

    def crashing_write(state, docs, vectors):
        writes.append(len(docs))
        if len(writes) == 3:
            if node is None:
                raise _Crash("simulated crash of the process")
            node.kill()  # the real node dies mid-build; this batch's bulk request fails
        return real_write(state, docs, vectors)

    backend.write = crashing_write  # type: ignore[method-assign]
    try:
        with pytest.raises((_Crash, BackendError)):
            build_index(backend, encoder, corpus, settings.index, settings.build,
                        rejects_path=tmp_path / "r.jsonl", progress=False)
    finally:
        backend.close()
    if node is not None:
        node.restart()
    summary = _build(settings, encoder, corpus, tmp_path)
    assert summary.resumed_from == 10  # two batches of 5 records were committed before the crash
    assert (summary.read, summary.indexed, summary.rejected) == (31, 30, 1)
    assert summary.count_ok
    backend = open_backend(settings)
    try:
        assert len(backend.fetch(settings.index, [f"d{i:02d}" for i in range(1, 31)])) == 30
        assert backend.info(settings.index).count == 30
    finally:
        backend.close()
