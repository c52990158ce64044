"""Ways a hostile or careless user could destroy or corrupt a live index, each a regression test (issue 11).

Every test here failed on the code before the fix: prune matched other aliases by prefix, names were used as
paths unchecked, an empty or fully rejected build replaced a live index, a resume mixed encoder settings, two
builders ran at once, credentials in URLs were printed and stored, a dead node gave tracebacks and instant retries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from ceindex.backends import open_backend
from ceindex.backends.embedded import EmbeddedBackend
from ceindex.backends.names import LOCKS_INDEX, index_name
from ceindex.cli import cli
from ceindex.config import BuildConfig, OpenSearchConfig, Settings
from ceindex.errors import BackendError, ConfigError
from ceindex.models import EncoderConfig, load_encoder
from indexer.build import build_index
from tests.conftest import BACKEND_PARAMS, REPO, SAMPLE
from tests.crashing import crash_on_write
from tests.serving import free_port

pytestmark = pytest.mark.reliability

SECRET = "s3cr3t-pw"


@pytest.fixture(params=BACKEND_PARAMS)
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    settings = Settings(home=str(tmp_path / "home"), build=BuildConfig(encode_batch_docs=5, chunk_docs=4))
    if request.param == "opensearch":
        settings = replace(settings, opensearch=OpenSearchConfig(url=request.getfixturevalue("opensearch_url"),
                                                                 max_retries=1, timeout=10))
    return settings


@pytest.fixture(scope="module")
def encoder(tiny_ce_dir: Path):
    return load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=64, batch_size=8))


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}{time.monotonic_ns() % 10**9}"


def _build(settings: Settings, encoder, alias: str, corpus: Path, tmp_path: Path, **kw):
    backend = open_backend(settings)
    try:
        return build_index(backend, encoder, corpus, alias, settings.build,
                           rejects_path=tmp_path / f"{alias}.rejects.jsonl", progress=False, **kw)
    finally:
        backend.close()


def _count(settings: Settings, alias: str) -> tuple[str, int]:
    backend = open_backend(settings)
    try:
        info = backend.info(alias)
        return info.physical, info.count
    finally:
        backend.close()


SAMPLE_CORPUS = SAMPLE / "corpus.jsonl"


# --- 2. prune touches only the indexes recorded behind that alias --------------------------------------------
def test_prune_never_deletes_another_alias_with_the_same_prefix(base: Settings, encoder, tmp_path: Path) -> None:
    short = _unique("pp")
    longer = f"{short}-x"
    _build(base, encoder, longer, SAMPLE_CORPUS, tmp_path)
    _build(base, encoder, short, SAMPLE_CORPUS, tmp_path)
    rebuilt = _build(base, encoder, short, SAMPLE_CORPUS, tmp_path, prune=True)
    assert len(rebuilt.pruned) == 1 and rebuilt.pruned[0].startswith(short + "-2")
    assert _count(base, longer)[1] == 30, "prune of 'pp' deleted the live index of 'pp-x'"


# --- 3. index names: one validated type, never a path outside the store ---------------------------------------
BAD_NAMES = ["", ".", "..", "*", "semi;rm", "a/b", "../../../x", "/abs/path", "x" * 300, "Upper", "a b", "a,b",
             "-dash", "_under", "q?", "a:b", "a\\b", LOCKS_INDEX, "pp-20261129t054512123", "abc\n", "café",
             "a-\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0669t\u0660\u0665\u0664\u0665\u0661\u0662\u0661\u0662\u0663"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_index_names_are_refused_before_anything_is_written(base: Settings, encoder, tmp_path: Path, name: str) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="index name|reserved"):
        _build(base, encoder, name, SAMPLE_CORPUS, tmp_path)
    backend = open_backend(base)
    try:  # a physical index name may be searched, not built
        with pytest.raises(BackendError if name.startswith("pp-") else ConfigError):
            backend.info(name)
        with pytest.raises(BackendError if name.startswith("pp-") else ConfigError):
            backend.bm25(name, ["q"], 3)
    finally:
        backend.close()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@hyp_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(BAD_NAMES))
def test_any_accepted_name_stays_inside_the_store(name: str, tmp_path: Path) -> None:
    try:
        accepted = index_name(name)
    except ConfigError:
        return
    assert accepted == name and "/" not in name and "\\" not in name and name not in (".", "..")
    assert name == name.lower() and not name.startswith(("-", "_", "+", "."))
    store = EmbeddedBackend(tmp_path / "store")
    folder = store._folder(name)  # noqa: SLF001 - the path the store would write
    assert Path(os.path.abspath(folder)).parent == Path(os.path.abspath(tmp_path / "store" / "indexes"))


def test_cli_refuses_a_traversal_name_with_one_line(ceindex_home: Path, tiny_ce_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["-q", "build", "--corpus", str(SAMPLE_CORPUS), "--index", "../../../escaped",
                                      "--encoder", f"ce:{tiny_ce_dir},layer=1", "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "index name '../../../escaped' is not allowed" in result.output
    assert not list(tmp_path.rglob("escaped*"))


# --- 4. an empty or fully rejected corpus never replaces a live index ------------------------------------------
@pytest.mark.parametrize("case", ["empty file", "every row rejected"])
def test_empty_or_fully_rejected_build_keeps_the_live_index(base: Settings, encoder, tmp_path: Path, case: str) -> None:
    alias = _unique("live")
    live = _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path)
    assert live.published
    bad = tmp_path / "bad.jsonl"
    bad.write_text("" if case == "empty file" else SAMPLE_CORPUS.read_text(), encoding="utf-8")
    build = base.build if case == "empty file" else replace(base.build, text_field="no_such_field")
    held = _build(replace(base, build=build), encoder, alias, bad, tmp_path)
    assert not held.published and held.indexed == 0 and "0 documents" in held.held_back
    assert _count(base, alias) == (live.physical, 30)
    # said explicitly, an empty index may be published
    allowed = _build(replace(base, build=replace(build, allow_empty=True, allow_rejects=True)), encoder, alias, bad, tmp_path)
    assert allowed.published and _count(base, alias) == (allowed.physical, 0)


def test_cli_build_of_an_empty_file_exits_1_and_keeps_the_alias(ceindex_home: Path, tiny_ce_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["-q", "build", "--index", "kept", "--encoder", f"ce:{tiny_ce_dir},layer=1", "--max-length", "64", "--no-progress"]
    assert runner.invoke(cli, args + ["--corpus", str(SAMPLE_CORPUS)]).exit_code == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(cli, args + ["--corpus", str(empty)])
    assert result.exit_code == 1 and "NOT published" in result.output and "--allow-empty" in result.output
    assert EmbeddedBackend(ceindex_home).info("kept").count == 30


# --- 5. a resume never mixes encoder settings ---------------------------------------------------------------------
class _Crash(RuntimeError):
    pass


def _build_crashing_at_write(settings: Settings, encoder, alias: str, tmp_path: Path, crash_at: int) -> None:
    """Build ``alias`` from the sample corpus and crash in the ``crash_at``-th batch write (earlier ones commit)."""
    backend = open_backend(settings)
    crash_on_write(backend, crash_at, _Crash)
    try:
        with pytest.raises(_Crash):
            build_index(backend, encoder, SAMPLE_CORPUS, alias, settings.build, rejects_path=tmp_path / "r.jsonl",
                        progress=False)
    finally:
        backend.close()


def test_resume_with_another_max_length_starts_a_new_build(base: Settings, encoder, tiny_ce_dir: Path, tmp_path: Path) -> None:
    alias = _unique("mix")
    _build_crashing_at_write(base, encoder, alias, tmp_path, crash_at=3)
    shorter = load_encoder(EncoderConfig(model=str(tiny_ce_dir), layer=1, max_length=32, batch_size=8))
    summary = _build(base, shorter, alias, SAMPLE_CORPUS, tmp_path)
    assert summary.resumed_from == 0 and summary.encoded == 30, "resumed a build made with max_length 64"
    backend = open_backend(base)
    try:
        assert backend.current_encoder(alias).max_length == 32
    finally:
        backend.close()
    # the same settings do resume, and docs/s counts only what this run encoded
    again = _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path)
    assert again.resumed_from == 10 and again.encoded == 20


# --- 9. one builder per index; a crash between sealing and publishing resumes ---------------------------------
def test_a_second_builder_of_the_same_index_is_refused(base: Settings, encoder, tmp_path: Path) -> None:
    alias = _unique("locked")
    holder = open_backend(base)
    try:
        with holder.build_lock(alias):
            with pytest.raises(BackendError, match=f"index '{alias}' is being built right now by pid {os.getpid()}"):
                _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path)
        assert _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path).published  # released after the holder ends
    finally:
        holder.close()


def test_embedded_lock_of_a_killed_builder_does_not_block(ceindex_home: Path, encoder, tmp_path: Path) -> None:
    script = ("import sys, time; from ceindex.backends.embedded import EmbeddedBackend\n"
              "with EmbeddedBackend(sys.argv[1]).build_lock('orphan'):\n    print('locked', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(ceindex_home)], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(BackendError, match=f"pid {child.pid}"):
            _build(Settings(home=str(ceindex_home)), encoder, "orphan", SAMPLE_CORPUS, tmp_path)
    finally:
        child.kill()
        child.wait()
    assert _build(Settings(home=str(ceindex_home)), encoder, "orphan", SAMPLE_CORPUS, tmp_path).published


def _os_settings(url: str) -> Settings:
    return Settings(opensearch=OpenSearchConfig(url=url, max_retries=1, timeout=10), build=BuildConfig(encode_batch_docs=10))


@pytest.mark.integration
def test_opensearch_lock_of_a_silent_holder_is_taken_over_on_our_clock(
    opensearch_url: str, encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder on another machine whose heartbeat stopped: taken over once its document has not changed for
    STALE_S on OUR clock (its own timestamp is never trusted: clocks differ between machines)."""
    from ceindex.backends import cluster_lock

    monkeypatch.setattr(cluster_lock, "STALE_S", 2.0)
    settings, alias = _os_settings(opensearch_url), _unique("stale")
    backend = open_backend(settings)
    try:
        backend.locks._ensure_index()  # noqa: SLF001
        future = time.time() + 3600  # a holder whose clock runs an hour ahead
        backend.client.index(index=LOCKS_INDEX, id=alias, refresh=True,
                             body={"owner": "pid 1 on elsewhere", "pid": 1, "host": "elsewhere", "heartbeat": future})
        begin = time.monotonic()
        assert _build(settings, encoder, alias, SAMPLE_CORPUS, tmp_path).published
        assert time.monotonic() - begin >= 2.0
    finally:
        backend.close()


@pytest.mark.integration
def test_opensearch_lock_of_a_live_holder_in_another_process_is_refused(
    opensearch_url: str, encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ceindex.backends import cluster_lock

    monkeypatch.setattr(cluster_lock, "STALE_S", 20.0)
    alias = _unique("alive")
    script = ("import sys, time\nfrom ceindex.backends import cluster_lock\ncluster_lock.HEARTBEAT_S = 0.5\n"
              "from ceindex.backends.opensearch import OpenSearchBackend\nfrom ceindex.config import OpenSearchConfig\n"
              "backend = OpenSearchBackend(OpenSearchConfig(url=sys.argv[1]))\n"
              "with backend.build_lock(sys.argv[2]):\n    print('locked', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script, opensearch_url, alias], stdout=subprocess.PIPE, cwd=REPO,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        begin = time.monotonic()
        with pytest.raises(BackendError, match=f"being built right now by pid {child.pid}"):
            _build(_os_settings(opensearch_url), encoder, alias, SAMPLE_CORPUS, tmp_path)
        assert time.monotonic() - begin < 10, "a live holder's heartbeat should be seen within a few beats"
    finally:
        child.kill()
        child.wait()


@pytest.mark.integration
def test_opensearch_builder_that_lost_its_lock_publishes_nothing_and_deletes_no_lock(
    opensearch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ceindex.backends import cluster_lock

    monkeypatch.setattr(cluster_lock, "HEARTBEAT_S", 0.2)
    alias = _unique("lost")
    backend = open_backend(_os_settings(opensearch_url))
    try:
        with backend.build_lock(alias):
            backend.client.index(index=LOCKS_INDEX, id=alias, refresh=True,  # another builder took it over
                                 body={"owner": "pid 2 on elsewhere", "token": "theirs", "heartbeat": time.time()})
            with pytest.raises(cluster_lock.LostLock, match="taken over by another builder"):
                backend.locks.check(alias, verify=True)
        assert backend.client.get(index=LOCKS_INDEX, id=alias)["_source"]["token"] == "theirs"
    finally:
        backend.client.delete(index=LOCKS_INDEX, id=alias, refresh=True)
        backend.close()


def test_crash_between_seal_and_publish_resumes_without_reencoding(base: Settings, encoder, tmp_path: Path) -> None:
    alias = _unique("sealed")
    backend = open_backend(base)

    def crash(_state) -> None:
        raise _Crash("crash before the alias moved")

    backend.publish = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            build_index(backend, encoder, SAMPLE_CORPUS, alias, base.build, rejects_path=tmp_path / "r.jsonl", progress=False)
    finally:
        backend.close()
    summary = _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path, prune=True)
    assert summary.published and summary.encoded == 0 and summary.pruned == []
    assert _count(base, alias) == (summary.physical, 30)


# --- 8. credentials in URLs never reach output, logs or reports ------------------------------------------------
@pytest.mark.integration
def test_credentials_in_the_url_are_never_printed_or_stored(opensearch_url: str, tiny_ce_dir: Path, tmp_path: Path,
                                                            ceindex_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = opensearch_url.replace("http://", f"http://admin:{SECRET}@")  # the test node ignores basic auth
    runner = CliRunner()
    common = ["--opensearch", url, "--index", _unique("cred")]
    built = runner.invoke(cli, ["-v", "build", "--corpus", str(SAMPLE_CORPUS), "--encoder", f"ce:{tiny_ce_dir},layer=1",
                                "--max-length", "64", "--no-progress", *common])
    assert built.exit_code == 0, built.output
    out = tmp_path / "report"
    evaluated = runner.invoke(cli, ["eval", "--data", str(SAMPLE), "--systems", "bm25", "--out", str(out), "--no-progress",
                                    *common])
    assert evaluated.exit_code == 0, evaluated.output
    failed = runner.invoke(cli, ["search", "--opensearch", f"http://admin:{SECRET}@127.0.0.1:{free_port()}",
                                 "--max-retries", "0", "--index", "x", "q"])
    assert failed.exit_code == 2
    texts = [built.output, evaluated.output, failed.output, caplog.text]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".md", ".html")]
    assert all(SECRET not in text for text in texts)
    assert "***@" in built.output and "***@" in failed.output


# --- 9. a dead cluster: backoff between retries, one paragraph, the right hint ----------------------------------
def test_retries_back_off_and_end_in_one_actionable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ceindex.backends import cluster
    from ceindex.backends import opensearch as os_backend

    delays: list[float] = []
    monkeypatch.setattr(cluster.time, "sleep", delays.append)  # the backoff both cluster backends share
    backend = os_backend.OpenSearchBackend(OpenSearchConfig(url=f"http://127.0.0.1:{free_port()}", max_retries=4))
    with pytest.raises(BackendError, match="cannot reach OpenSearch at http://127.0.0.1:.* is the cluster running"):
        backend.ping()
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_dead_cluster_cli_error_has_no_traceback(ceindex_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ceindex.cli", "search", "--opensearch", f"http://127.0.0.1:{free_port()}",
         "--max-retries", "2", "--index", "x", "q"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 4, result.stderr
    assert result.stderr.count("retry") == 2 and "cannot reach the cluster" in result.stderr


@pytest.mark.integration
def test_https_against_a_plain_http_port_suggests_http(opensearch_url: str) -> None:
    from ceindex.backends.opensearch import OpenSearchBackend

    url = opensearch_url.replace("http://", "https://")
    backend = OpenSearchBackend(OpenSearchConfig(url=url, max_retries=0, timeout=10))
    with pytest.raises(BackendError) as caught:
        backend.ping()
    assert "does not speak TLS" in str(caught.value) and "http://" in str(caught.value)
    assert "--ca-certs" not in str(caught.value)


def test_build_summary_json_is_valid_and_reports_publication(ceindex_home: Path, tiny_ce_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["-q", "build", "--corpus", str(SAMPLE_CORPUS), "--index", "summ", "--json",
                                      "--encoder", f"ce:{tiny_ce_dir},layer=1", "--max-length", "64", "--no-progress"])
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["published"] is True and summary["encoded"] == 30


@pytest.mark.integration
def test_rows_refused_by_opensearch_survive_a_resume_and_allow_rejects_publishes(opensearch_url: str, encoder,
                                                                                 tmp_path: Path) -> None:
    """A row OpenSearch refuses (mapping conflict) was counted only by the run that wrote it: the documented
    `--allow-rejects` rerun then failed its count check forever (read 6, indexed 5, rejected 0)."""
    corpus = tmp_path / "refused.jsonl"
    rows = [{"_id": f"d{i}", "text": f"document number {i} about cells", "x": i} for i in range(1, 7)]
    rows[2]["x"] = "not a number"  # d3: the mapping made x a long from d1
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings, alias = _os_settings(opensearch_url), _unique("refused")
    held = _build(settings, encoder, alias, corpus, tmp_path)
    assert (held.indexed, held.rejected, held.published) == (5, 1, False)
    assert "rejected by OpenSearch" in Path(held.rejects_file).read_text()
    allowed = _build(replace(settings, build=replace(settings.build, allow_rejects=True)), encoder, alias, corpus, tmp_path)
    assert (allowed.physical, allowed.encoded, allowed.rejected, allowed.count_ok, allowed.published) == (
        held.physical, 0, 1, True, True)
    assert "d3" in Path(allowed.rejects_file).read_text()


@pytest.mark.parametrize("url", [f"bob:{SECRET}@127.0.0.1:1", f"http://bob:{SECRET} x@127.0.0.1:1",
                                 f"http://bob:{SECRET}/x@127.0.0.1:1", "http://127.0.0.1:99999"])
def test_malformed_cluster_urls_are_one_line_errors_that_never_repeat_the_url(ceindex_home: Path, url: str) -> None:
    result = CliRunner().invoke(cli, ["search", "--opensearch", url, "--index", "x", "q"])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "the cluster URL (--cluster / --opensearch) is not valid" in result.output
    assert SECRET not in result.output and "Traceback" not in result.output


def test_config_output_and_repr_never_show_url_credentials(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"opensearch:\n  url: https://bob:{SECRET}@cluster:9200\n")
    for args in (["config", "--config", str(config), "--json"], ["config", "--config", str(config)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and SECRET not in result.output and "https://***@cluster:9200" in result.output
    from ceindex.config import load_settings

    assert SECRET not in repr(load_settings(config)) and SECRET not in str(load_settings(config).opensearch)


def test_resume_after_the_tokenizer_changed_starts_a_new_build(tiny_ce_dir: Path, tmp_path: Path) -> None:
    """Only the tokenizer files changed (casing): the resume mixed vectors of two tokenizers (5 old, 25 new)."""
    import shutil

    from ceindex.errors import EncoderMismatchError
    from search_pipeline import SearchPipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_ce_dir, model)
    settings = Settings(index="tok", home=str(tmp_path / "home"), build=BuildConfig(encode_batch_docs=5))
    config = EncoderConfig(model=str(model), layer=1, max_length=64, batch_size=8)
    _build_crashing_at_write(settings, load_encoder(config), "tok", tmp_path, crash_at=2)
    tokenizer_config = model / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    data["do_lower_case"] = not data.get("do_lower_case", True)
    tokenizer_config.write_text(json.dumps(data))
    changed = load_encoder(config)
    summary = _build(settings, changed, "tok", SAMPLE_CORPUS, tmp_path)
    assert summary.resumed_from == 0 and summary.encoded == 30
    # and queries are refused with a tokenizer other than the one the index was built with
    data["do_lower_case"] = not data["do_lower_case"]
    tokenizer_config.write_text(json.dumps(data))
    with pytest.raises(EncoderMismatchError, match="tokenizer_sha256"):
        SearchPipeline(settings, query_encoder=load_encoder(config))


def test_a_clean_build_never_deletes_a_file_it_did_not_write(ceindex_home: Path, encoder, tmp_path: Path) -> None:
    """A clean build removed whatever --rejects named (a user's notes; as root even /dev/null)."""
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes\n")
    settings = Settings(home=str(ceindex_home))
    backend = open_backend(settings)
    try:
        summary = build_index(backend, encoder, SAMPLE_CORPUS, "clean", settings.build, rejects_path=precious,
                              progress=False)
    finally:
        backend.close()
    assert summary.rejected == 0 and precious.read_text() == "my notes\n"
    # a rejects file ceindex wrote earlier is removed once the corpus is clean
    stale = tmp_path / "stale.jsonl"
    stale.write_text(json.dumps({"source": "c.jsonl", "line": 3, "id": None, "reason": "empty text"}) + "\n")
    backend = open_backend(settings)
    try:
        build_index(backend, encoder, SAMPLE_CORPUS, "clean3", settings.build, rejects_path=stale, progress=False)
    finally:
        backend.close()
    assert not stale.exists()


def test_the_reranker_never_exceeds_the_model_positions(tiny_ce_dir: Path) -> None:
    """--rerank-max-length above the model's positions crashed searches (size of tensor a (256) must match 130)."""
    from ceindex.models.scorer import CrossEncoderReranker

    reranker = CrossEncoderReranker(str(tiny_ce_dir), max_length=4096, device="cpu")
    long_text = " ".join(["photosynthesis chloroplast light energy"] * 100)
    assert reranker.max_length <= 130 and reranker.score([(long_text, long_text)]).shape == (1,)


def test_a_build_whose_count_check_failed_is_not_resumed_forever(base: Settings, encoder, tmp_path: Path) -> None:
    """A sealed build whose count check failed was 'resumed' by every rerun and sealed to the same failure."""
    alias = _unique("count")
    backend = open_backend(base)
    real_seal = backend.seal
    backend.seal = lambda state, settings: real_seal(state, settings) - 1  # type: ignore[method-assign]
    try:
        failed = build_index(backend, encoder, SAMPLE_CORPUS, alias, base.build, rejects_path=tmp_path / "r.jsonl",
                             progress=False)
    finally:
        backend.close()
    assert not failed.published and "count check failed" in failed.held_back
    again = _build(base, encoder, alias, SAMPLE_CORPUS, tmp_path, prune=True)
    assert again.published and again.physical != failed.physical and again.resumed_from == 0
    assert again.pruned == [failed.physical]
