"""``ceindex build --slice I/N`` + ``--finalize`` on the embedded store and the real OpenSearch node: three slices
fill one index, one crashes and resumes on its own, the alias moves only at the finalize, and slices with other
encoder settings or another N are refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ceindex.backends import open_backend
from ceindex.backends.base import BuildState
from ceindex.config import Settings
from ceindex.data.slices import SliceSpec
from ceindex.errors import BackendError, EncoderMismatchError
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from indexer.slices import build_slice, finalize_slices
from tests.conftest import ALL_BACKEND_PARAMS, REPO, SAMPLE
from tests.integration.conftest import build_settings
from tests.crashing import crash_on_write

CORPUS = SAMPLE / "corpus.jsonl"
IDS = {json.loads(line)["_id"] for line in CORPUS.read_text().splitlines() if line.strip()}


@pytest.fixture(params=ALL_BACKEND_PARAMS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return build_settings(request, tmp_path, "sl")


class _Crash(RuntimeError):
    pass


def _slice(settings: Settings, encoder, spec: SliceSpec, tmp_path: Path, crash_at_write: int = 0,
           corpus: Path = CORPUS):
    backend = open_backend(settings)
    if crash_at_write:
        crash_on_write(backend, crash_at_write, _Crash)
    try:
        return build_slice(backend, encoder, corpus, settings.index, settings.build, spec,
                           rejects_path=tmp_path / f"{spec.key}.jsonl", progress=False)
    finally:
        backend.close()


def _finalize(settings: Settings, corpus: Path = CORPUS, **kw):
    backend = open_backend(settings)
    try:
        return finalize_slices(backend, corpus, settings.index, settings.build, **kw)
    finally:
        backend.close()


def _alias_target(settings: Settings) -> str | None:
    backend = open_backend(settings)
    try:
        return backend.alias_target(settings.index)
    finally:
        backend.close()


def test_three_slices_one_crashed_and_resumed_then_one_finalize(settings: Settings, encoder, tiny_ce_dir: Path,
                                                               tmp_path: Path) -> None:
    first = _slice(settings, encoder, SliceSpec(1, 3), tmp_path)
    assert first.slices_pending == ["2/3 (never started)", "3/3 (never started)"]
    with pytest.raises(_Crash):
        _slice(settings, encoder, SliceSpec(2, 3), tmp_path, crash_at_write=2)
    # slice 2's first batch: its first 5 rows, the 12th row of the corpus the last of them
    with pytest.raises(BackendError, match=r"slice\(s\) 2/3 \(unfinished: 12 corpus rows committed\), "
                                           r"3/3 \(never started\) not done"):
        _finalize(settings)
    assert _alias_target(settings) is None, "the alias must not move before all slices and the finalize"

    shorter = load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=32, batch_size=8))
    with pytest.raises(EncoderMismatchError, match=r"slice 3/3 refused: .*max_length: the build has 64, this slice 32"):
        _slice(settings, shorter, SliceSpec(3, 3), tmp_path)
    with pytest.raises(BackendError, match="cut into 3 slices, not 4"):
        _slice(settings, encoder, SliceSpec(3, 4), tmp_path)

    third = _slice(settings, encoder, SliceSpec(3, 3), tmp_path)
    assert third.slices_pending == ["2/3 (unfinished: 12 corpus rows committed)"]
    second = _slice(settings, encoder, SliceSpec(2, 3), tmp_path)  # the rerun resumes after its committed batch
    assert second.resumed_from == 12 and 0 < second.encoded < second.read and second.slices_pending == []
    assert _alias_target(settings) is None
    again = _slice(settings, encoder, SliceSpec(1, 3), tmp_path)  # a done slice rerun does nothing
    assert again.encoded == 0 and again.read == first.read

    assert first.physical == second.physical == third.physical
    assert first.read + second.read + third.read == len(IDS) == 30
    assert all(s.rejected == 0 for s in (first, second, third))

    final = _finalize(settings)
    assert final.published and final.count_ok and (final.read, final.indexed, final.rejected) == (30, 30, 0)
    assert _alias_target(settings) == first.physical
    backend = open_backend(settings)
    try:
        info = backend.info(settings.index)
        assert info.count == 30 and info.encoder == encoder.describe()
        assert set(backend.fetch(settings.index, sorted(IDS))) == IDS, "union of the slices == the corpus"
        sliced_knn = backend.knn(settings.index, encoder.encode(["lithium battery", "gene expression"]), 30)
    finally:
        backend.close()
    # the vectors are those an unsliced build writes: every k-NN ranking is the same
    plain = replace(settings, index=settings.index + "p")
    backend = open_backend(plain)
    try:
        build_index(backend, encoder, CORPUS, plain.index, plain.build, rejects_path=tmp_path / "p.jsonl",
                    progress=False)
        plain_knn = backend.knn(plain.index, encoder.encode(["lithium battery", "gene expression"]), 30)
    finally:
        backend.close()
    assert [[h.id for h in hits] for hits in sliced_knn] == [[h.id for h in hits] for hits in plain_knn]
    assert np.allclose([[h.score for h in hits] for hits in sliced_knn], [[h.score for h in hits] for hits in plain_knn],
                       atol=1e-5)
    with pytest.raises(BackendError, match="no unpublished sliced build"):
        _finalize(settings)


def test_three_slice_processes_at_once_then_finalize_on_the_cli(settings: Settings, tiny_ce_dir: Path,
                                                               tmp_path: Path) -> None:
    """Three `ceindex build --slice I/3` processes start together (they take the alias lock in turn to agree on
    one index, then commit their progress side by side); `--finalize` publishes."""
    flags = ["--index", settings.index, "--corpus", str(CORPUS), "--encoder", f"ce:{tiny_ce_dir},layer=1",
             "--max-length", "64", "--encode-batch-docs", "5", "--no-progress"]
    if settings.opensearch.url:
        flags += ["--cluster", settings.opensearch.url]
    env = os.environ | {"CEINDEX_HOME": settings.home or "", "TOKENIZERS_PARALLELISM": "false",
                        "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ceindex.cli", "-q", "build", *flags]
    procs = [subprocess.Popen([*cmd, "--slice", f"{n}/3", "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (1, 2, 3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    summaries = [json.loads(out) for out, _ in outs]
    assert len({s["physical"] for s in summaries}) == 1, "all slices wrote into one index"
    assert sum(s["read"] for s in summaries) == 30 and _alias_target(settings) is None
    final = subprocess.run([*cmd, "--finalize", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    result = json.loads(final.stdout)
    assert result["published"] and result["count_ok"] and result["indexed"] == 30
    assert _alias_target(settings) == summaries[0]["physical"]


def test_rejects_of_all_slices_hold_the_finalize_back_until_allowed(settings: Settings, encoder,
                                                                    tmp_path: Path) -> None:
    """A row without an id (bad JSON) and a duplicate id are rejected by exactly one slice each; the finalize
    counts them from every slice's record, holds the build back, and publishes it with --allow-rejects."""
    corpus = tmp_path / "corpus.jsonl"
    lines = CORPUS.read_text().splitlines()
    corpus.write_text("\n".join([*lines, "{not json", lines[0]]) + "\n")
    summaries = []
    for number in (1, 2, 3):
        backend = open_backend(settings)
        try:
            summaries.append(build_slice(backend, encoder, corpus, settings.index, settings.build,
                                         SliceSpec(number, 3), rejects_path=tmp_path / f"r{number}.jsonl",
                                         progress=False))
        finally:
            backend.close()
    assert sum(s.read for s in summaries) == 32 and sum(s.rejected for s in summaries) == 2
    backend = open_backend(settings)
    try:
        held = finalize_slices(backend, corpus, settings.index, settings.build)
        assert not held.published and held.count_ok and (held.read, held.indexed, held.rejected) == (32, 30, 2)
        assert "2 row(s) were rejected" in held.held_back and "r" in (held.rejects_file or "")
        assert backend.alias_target(settings.index) is None
        allowed = finalize_slices(backend, corpus, settings.index, replace(settings.build, allow_rejects=True))
        assert allowed.published and backend.info(settings.index).count == 30
    finally:
        backend.close()
    written = [json.loads(line) for n in (1, 2, 3) if (tmp_path / f"r{n}.jsonl").is_file()
               for line in (tmp_path / f"r{n}.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in written) == [31, 32]


def _slice_progress(settings: Settings, number: int) -> dict:
    """Slice ``number``'s recorded progress in the (one) sliced build of the index, {} before it has one."""
    backend = open_backend(settings)
    try:
        metas = backend.build_metas(settings.index)
        if not metas or "encoder" not in next(iter(metas.values())):  # not created yet
            return {}
        (physical, meta), = metas.items()
        return backend.read_slices(BuildState.from_meta(physical, meta)).get(number, {})
    finally:
        backend.close()


def test_a_slice_process_killed_with_sigkill_resumes_after_its_last_commit(
    settings: Settings, encoder, tiny_ce_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `ceindex build --slice 2/3` process is SIGKILLed once it has committed a batch; rerunning the slice
    resumes after that batch (its lock is taken over: the kernel drops the embedded flock, the cluster lock goes
    stale), and the three slices + finalize hold the whole corpus."""
    from ceindex.backends import cluster_lock

    monkeypatch.setattr(cluster_lock, "STALE_S", 2.0)  # the killed holder's heartbeat stops: taken over in 2 s
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    corpus = tmp_path / "copies.jsonl"
    corpus.write_text("".join(json.dumps(row | {"_id": f"{row['_id']}-{k}"}) + "\n" for k in range(40) for row in rows))
    flags = ["--index", settings.index, "--corpus", str(corpus), "--encoder", f"ce:{tiny_ce_dir},layer=1",
             "--max-length", "64", "--encode-batch-docs", "5", "--no-progress", "--slice", "2/3"]
    if settings.opensearch.url:
        flags += ["--cluster", settings.opensearch.url]
    env = os.environ | {"CEINDEX_HOME": settings.home or "", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "ceindex.cli", "-q", "build", *flags], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while _slice_progress(settings, 2).get("committed", 0) == 0:
            assert child.poll() is None, child.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the slice never committed a batch"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    killed = _slice_progress(settings, 2)
    assert killed["status"] != "complete" and 0 < killed["committed"] < 1200, "killed too late to test a resume"
    resumed = _slice(settings, encoder, SliceSpec(2, 3), tmp_path, corpus=corpus)
    assert resumed.resumed_from >= killed["committed"] and 0 < resumed.encoded < resumed.read
    others = [_slice(settings, encoder, SliceSpec(n, 3), tmp_path, corpus=corpus) for n in (1, 3)]
    assert resumed.read + sum(s.read for s in others) == 1200
    final = _finalize(settings, corpus)
    assert final.published and final.count_ok and final.indexed == 1200


def test_cli_prints_what_each_slice_did_and_what_is_left(ceindex_home: Path, tiny_ce_dir: Path) -> None:
    from click.testing import CliRunner

    from ceindex.cli import cli

    flags = ["build", "--index", "clisl", "--corpus", str(CORPUS), "--encoder", f"ce:{tiny_ce_dir},layer=1",
             "--max-length", "64", "--no-progress"]
    runner = CliRunner()
    first = runner.invoke(cli, [*flags, "--slice", "1/2"])
    assert first.exit_code == 0, first.output
    assert "slice 1/2 of clisl -> clisl-" in first.output and "complete" in first.output
    assert "still to do before --finalize: slice 2/2 (never started)" in first.output
    early = runner.invoke(cli, [*flags, "--finalize"])
    assert early.exit_code == 2 and "slice(s) 2/2 (never started) not done" in early.output
    assert "Traceback" not in early.output
    second = runner.invoke(cli, [*flags, "--slice", "2/2"])
    assert second.exit_code == 0 and "all slices are done: run the same command with --finalize" in second.output
    final = runner.invoke(cli, [*flags, "--finalize"])
    assert final.exit_code == 0, final.output
    assert "count check: ok" in final.output and "published: clisl now serves clisl-" in final.output


def test_a_failed_count_check_at_the_finalize_publishes_nothing_and_says_to_rerun_the_slices(
    ceindex_home: Path, encoder, tmp_path: Path
) -> None:
    import sqlite3

    settings = Settings(index="lost", home=str(ceindex_home))
    done = [_slice(settings, encoder, SliceSpec(n, 2), tmp_path) for n in (1, 2)]
    db = sqlite3.connect(ceindex_home / "indexes" / done[0].physical / "docs.sqlite")
    with db:  # a document the slices wrote goes missing before the finalize
        db.execute("DELETE FROM docs WHERE id = (SELECT id FROM docs LIMIT 1)")
    db.close()
    final = _finalize(settings)
    assert not final.published and not final.count_ok and (final.read, final.indexed) == (30, 29)
    assert "count check failed" in final.held_back and "rerun every slice's command" in final.held_back
    assert _alias_target(settings) is None
    with pytest.raises(BackendError, match="no unpublished sliced build"):  # marked failed: never finalized again
        _finalize(settings)
    again = _slice(settings, encoder, SliceSpec(1, 2), tmp_path)
    assert again.physical != done[0].physical and again.encoded == again.read


def _delete_physical(settings: Settings, physical: str) -> None:
    """Delete a physical index behind ceindex's back (by hand, or an old prune)."""
    if settings.opensearch.url:
        backend = open_backend(settings)
        try:
            backend.client.indices.delete(index=physical)
        finally:
            backend.close()
    else:
        shutil.rmtree(Path(settings.home or "") / "indexes" / physical)


def _physicals(settings: Settings) -> set[str]:
    backend = open_backend(settings)
    try:
        return set(backend.build_metas(settings.index))
    finally:
        backend.close()


def test_prune_keeps_a_sliced_build_whose_slices_are_still_loading(settings: Settings, encoder,
                                                                   tmp_path: Path) -> None:
    """An unsliced `build --prune` of the same alias while slice 2/2 is unfinished (its builder holds only its own
    slice lock) publishes and prunes, but keeps the sliced build: slice 2 then resumes and the finalize publishes."""
    first = _slice(settings, encoder, SliceSpec(1, 2), tmp_path)
    with pytest.raises(_Crash):
        _slice(settings, encoder, SliceSpec(2, 2), tmp_path, crash_at_write=2)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"_id": f"o{i}", "text": f"other document {i}"}) + "\n" for i in range(5)))
    backend = open_backend(settings)
    try:
        routine = build_index(backend, encoder, other, settings.index, settings.build,
                              rejects_path=tmp_path / "o.jsonl", prune=True, progress=False)
    finally:
        backend.close()
    assert routine.published and first.physical not in routine.pruned
    assert first.physical in _physicals(settings)
    second = _slice(settings, encoder, SliceSpec(2, 2), tmp_path)
    assert second.physical == first.physical and second.resumed_from > 0 and second.slices_pending == []
    final = _finalize(settings, prune=True)
    assert final.published and final.indexed == 30 and routine.physical in final.pruned
    assert _alias_target(settings) == first.physical


def test_a_slice_whose_build_is_deleted_under_it_fails_clearly_and_creates_nothing(settings: Settings, encoder,
                                                                                   tmp_path: Path) -> None:
    first = _slice(settings, encoder, SliceSpec(1, 2), tmp_path)

    class DeletesTheBuild:  # the build is deleted while slice 2 embeds its second batch
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode(self, texts):
            self.calls += 1
            if self.calls == 2:
                _delete_physical(settings, first.physical)
            return self.inner.encode(texts)

    with pytest.raises(BackendError, match=rf"the sliced build {first.physical} of '{settings.index}' no longer exists"):
        _slice(settings, DeletesTheBuild(encoder), SliceSpec(2, 2), tmp_path)
    assert first.physical not in _physicals(settings), "a write must not create the deleted index afresh"
    if not settings.opensearch.url:
        assert not (Path(settings.home or "") / "indexes" / first.physical).exists()


def test_a_slice_batch_holds_encode_batch_docs_of_its_own_rows_whatever_n(settings: Settings, encoder,
                                                                          tmp_path: Path) -> None:
    """With N = 6 slices and --encode-batch-docs 2, slice 1 commits after every 2 of its own rows (not after 12
    corpus rows), and the encoder never gets more than 2 texts at once."""
    spec = SliceSpec(1, 6)
    mine = [position for position, line in enumerate(CORPUS.read_text().splitlines(), start=1)
            if spec.holds(json.loads(line)["_id"], position)]
    assert len(mine) >= 4
    settings = replace(settings, build=replace(settings.build, encode_batch_docs=2))
    backend = open_backend(settings)
    commits, sizes = [], []
    real_commit, real_encode = backend.commit_slice, encoder.encode
    backend.commit_slice = lambda state, number, record: (commits.append(record["committed"]),
                                                          real_commit(state, number, record))[1]

    class Counting:
        def __getattr__(self, name):
            return getattr(encoder, name)

        def encode(self, texts):
            sizes.append(len(texts))
            return real_encode(texts)

    try:
        summary = build_slice(backend, Counting(), CORPUS, settings.index, settings.build, spec,
                              rejects_path=tmp_path / "r.jsonl", progress=False)
    finally:
        backend.close()
    assert summary.read == len(mine) and max(sizes) <= 2 and sum(sizes) == len(mine)
    full = len(mine) // 2
    assert commits[:full] == [mine[2 * i + 1] for i in range(full)], (commits, mine)
    assert commits[-1] == 30


def test_a_slice_with_other_index_settings_is_refused_naming_them(settings: Settings, encoder,
                                                                  tmp_path: Path) -> None:
    first = _slice(settings, encoder, SliceSpec(1, 2), tmp_path)
    build = settings.build
    other = replace(settings, build=replace(build, shards=build.shards + 1, knn_m=build.knn_m * 2))
    with pytest.raises(BackendError, match=rf"slice 2/2 refused: the build {first.physical} .*other index settings "
                                           rf"\(--shards: the build has {build.shards}, this slice {build.shards + 1}; "
                                           rf"--knn-m: the build has {build.knn_m}, this slice {build.knn_m * 2}\)"):
        _slice(other, encoder, SliceSpec(2, 2), tmp_path)
    same = replace(settings, build=replace(build, replicas=build.replicas + 1))  # replicas: set by the finalize
    assert _slice(same, encoder, SliceSpec(2, 2), tmp_path).slices_pending == []
