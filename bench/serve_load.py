"""`ceindex serve` under concurrent load: before/after micro-batching and the score cache, with and without re-rank.

    flock /tmp/ceindex-bench.lock .venv/bin/python bench/serve_load.py [--seconds 15] [--clients 1,4,16]
        [--modes before,after] [--rerank both|on|off] [--rerank-top 20] [--reference 40] [--home DIR]

Builds SciFact (5,183 abstracts) with the fixture cross-encoder at one layer (embedded backend) or reuses --home,
then for each re-rank setting starts the real `ceindex serve` once per mode:

* before: --no-batching --score-cache-size 0 --max-concurrent 2 --max-queued 8 (serve until micro-batching:
  every search runs the cross-encoder on its own search thread, 2 at once);
* after: serve's defaults (micro-batching, the score cache) plus --after-flags (default --max-concurrent 8
  --max-queued 16, so that up to 8 searches can meet at the batcher).

The two servers run side by side and their cells alternate, so load from other processes falls on both alike.

Each cell runs C client threads for --seconds; every request takes the next query from a cursor over all 1,109
SciFact queries that starts at 0 on every server, so with re-rank on no query repeats on a server within a run
(the cache cannot help: distinct queries) and answers can be checked against the reference (the "before"
server's single-client answers to the first --reference queries). A prober thread GETs /healthz every 50 ms
throughout every cell (a process of its own; its p50/p99/max are per cell). Extra rows: "after" with --cache-queries repeated queries
(the cache's case), and a deliberate overload (--overload-clients clients, 503s expected, no other 5xx).
Everything stays on 127.0.0.1 and every loop is bounded by --seconds. Writes bench/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, REPO, SCIFACT, markdown_table, require, write_json  # noqa: E402

PROBE_EVERY_S = 0.05
# before: what serve did until micro-batching (2 searches at once, 8 waiting); after: batching, the cache, and room
# for 8 searches to meet at the batcher (--after-flags)
MODE_FLAGS = {"before": ["--no-batching", "--score-cache-size", "0", "--max-concurrent", "2", "--max-queued", "8"]}
AFTER_FLAGS = "--max-concurrent 8 --max-queued 16"
OVERLOAD_PAUSE_S = 0.05  # a refused overload client waits this long before its next request (keeps the run bounded)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ceindex(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "ceindex.cli", *args]


def build(home: str, layer: int, env: dict[str, str]) -> str:
    index = f"scifact-l{layer}"
    subprocess.run(_ceindex("-q", "build", "--data", str(SCIFACT), "--index", index, "--home", home,
                            "--encoder", f"ce:{FIXTURE_CE},layer={layer}", "--no-progress", env=env),
                   check=True, env=env, cwd=REPO)
    return index


def start_server(home: str, index: str, port: int, env: dict[str, str], extra: list[str]) -> subprocess.Popen:
    import httpx

    # the server's log goes to a file: a pipe nobody reads fills up under overload (a warning per 503) and blocks it
    log = Path(home) / f"serve-{port}.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(_ceindex("-q", "serve", "--index", index, "--home", home, "--port", str(port),
                                           *extra, env=env), env=env, cwd=REPO, stdout=sink, stderr=sink)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"ceindex serve did not start: {log.read_text(errors='replace')[-2000:]}")


def answer(client: Any, url: str, query: str) -> tuple[int, list[str] | None]:
    response = client.post(url, json={"query": query, "k": 10}, timeout=300)
    if response.status_code != 200:
        return response.status_code, None
    return 200, [hit["id"] for hit in response.json()["results"][0]["hits"]]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(max(values))}


class HealthProber:
    """GETs /healthz every PROBE_EVERY_S while a cell runs, from a process of its own (the load clients' threads
    would otherwise hold up the prober's own interpreter and inflate what it measures); keeps each latency."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "HealthProber":
        self._process = subprocess.Popen([sys.executable, __file__, "--probe", self.base], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *_: Any) -> None:
        assert self._process is not None
        out, _ = self._process.communicate(timeout=60)  # closing its stdin stops it
        result = json.loads(out)
        self.latencies, self.failures = result["latencies"], result["failures"]

    def summary(self) -> dict[str, Any]:
        return {"healthz_" + k: v for k, v in _percentiles(self.latencies).items()} | {
            "healthz_n": len(self.latencies), "healthz_failures": self.failures}


def probe(base: str) -> None:
    """The prober process: GET /healthz every PROBE_EVERY_S until stdin closes; print the latencies as JSON."""
    import httpx

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: list[float] = []
    failures: dict[str, int] = {}
    with httpx.Client() as client:
        while not stop.is_set():
            begin = time.perf_counter()
            try:
                status: Any = client.get(f"{base}/healthz", timeout=10).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == 200:
                latencies.append((time.perf_counter() - begin) * 1000)
            else:
                failures[str(status)] = failures.get(str(status), 0) + 1
            stop.wait(PROBE_EVERY_S)
    print(json.dumps({"latencies": latencies, "failures": failures}))


@dataclass
class QuerySource:
    """Which query each request asks: the next one from a cursor over the pool, or a short list cycled."""

    pool: list[str]
    cycle: int | None = None  # None: never repeat (cursor over the whole pool); N: cycle over the first N
    _next: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int:
        with self._lock:
            i = next(self._next)
        return i % (self.cycle or len(self.pool))


def load(base: str, source: QuerySource, reference: dict[int, list[str]], clients: int, seconds: float,
         *, pause_after_refusal: float = 0.0) -> dict[str, Any]:
    import httpx

    url = f"{base}/search"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counts = {"wrong": 0, "checked": 0}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop() -> None:
        with httpx.Client() as client:
            while time.perf_counter() < stop_at:
                qi = source.take()
                begin = time.perf_counter()
                try:
                    status, ids = answer(client, url, source.pool[qi])
                except httpx.HTTPError as exc:
                    status, ids = type(exc).__name__, None
                elapsed = (time.perf_counter() - begin) * 1000
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        latencies.append(elapsed)
                        if qi in reference:
                            counts["checked"] += 1
                            counts["wrong"] += ids != reference[qi]
                if status != 200 and pause_after_refusal:
                    time.sleep(pause_after_refusal)

    begin = time.perf_counter()
    with HealthProber(base) as prober:
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - begin
    ok = statuses.get("200", 0)
    return {"clients": clients, "seconds": round(wall, 1), "ok": ok, "statuses": statuses,
            "errors": sum(n for s, n in statuses.items() if s != "200"),
            "server_errors_not_503": sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503"),
            "wrong": counts["wrong"], "checked": counts["checked"], "req_per_s": ok / wall,
            **_percentiles(latencies), **prober.summary()}


def serving_stats(base: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{base}/healthz", timeout=30).json().get("serving", {})


def _batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Batches, requests per batch and cache hits during one cell (from /healthz's serving counters)."""
    out: dict[str, Any] = {}
    b0, b1 = before.get("batcher"), after.get("batcher")
    if b0 and b1:
        batches = b1["batches"] - b0["batches"]
        out["batches"] = batches
        out["requests_per_batch"] = (b1["requests"] - b0["requests"]) / batches if batches else None
    c0, c1 = before.get("score_cache"), after.get("score_cache")
    if c0 and c1:
        hits, misses = c1["hits"] - c0["hits"], c1["misses"] - c0["misses"]
        out["cache_hit_rate"] = hits / (hits + misses) if hits + misses else None
    return out


def reference_answers(base: str, pool: list[str], n: int) -> dict[int, list[str]]:
    import httpx

    with httpx.Client() as client:
        answers = {i: answer(client, f"{base}/search", pool[i]) for i in range(n)}
    bad = {i: status for i, (status, _) in answers.items() if status != 200}
    if bad:
        raise SystemExit(f"the reference pass got non-200 answers: {bad}")
    return {i: ids for i, (_, ids) in answers.items() if ids is not None}


@dataclass
class Run:
    args: argparse.Namespace
    home: str
    index: str
    env: dict[str, str]
    pool: list[str]
    cells: list[dict[str, Any]] = field(default_factory=list)

    def server(self, flags: list[str]) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        return start_server(self.home, self.index, port, self.env, flags), f"http://127.0.0.1:{port}"

    def cell(self, base: str, label: dict[str, Any], source: QuerySource, reference: dict[int, list[str]],
             clients: int, seconds: float, **options: Any) -> None:
        before = serving_stats(base)
        cell = label | load(base, source, reference, clients, seconds, **options)
        cell |= _batch_delta(before, serving_stats(base))
        self.cells.append(cell)
        print(json.dumps(cell), flush=True)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def run_setting(run: Run, rerank: bool) -> None:
    """Both modes for one re-rank setting, their servers up together and their cells interleaved (before, after
    at 1 client, then at 4, ...) so that the machine's other load falls on both alike; the 'before' server's
    single-client answers are the reference."""
    args = run.args
    search_flags = ["--rerank", "--rerank-top", str(args.rerank_top)] if rerank else ["--no-rerank"]
    modes = args.modes.split(",")
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for mode in modes:
            servers[mode] = run.server(search_flags + (MODE_FLAGS[mode] if mode in MODE_FLAGS else args.after_flags.split()))
        reference = reference_answers(servers[modes[0]][1], run.pool, args.reference if rerank else 100)
        sources = {mode: QuerySource(run.pool) for mode in modes}  # a cursor each: no query repeats on a server
        for clients in (int(x) for x in args.clients.split(",")):
            for mode in modes:
                run.cell(servers[mode][1], {"rerank": rerank, "mode": mode, "queries": "distinct"}, sources[mode],
                         reference, clients, args.seconds)
        last = servers[modes[-1]][1]
        if rerank and args.cache_queries:
            repeated = QuerySource(run.pool, cycle=args.cache_queries)
            run.cell(last, {"rerank": rerank, "mode": modes[-1], "queries": f"{args.cache_queries} repeated"},
                     repeated, reference, max(int(x) for x in args.clients.split(",")), args.seconds)
        if rerank and args.overload_clients:
            run.cell(last, {"rerank": rerank, "mode": modes[-1], "queries": "distinct", "overload": True},
                     sources[modes[-1]], reference, args.overload_clients, args.overload_seconds,
                     pause_after_refusal=OVERLOAD_PAUSE_S)
    finally:
        for server, _ in servers.values():
            _stop(server)


def _fmt(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for c in cells:
        kind = "overload" if c.get("overload") else c["queries"]
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(c["statuses"].items()) if s != "200") or "–"
        rows.append([("top " + str(c.get("rerank_top"))) if c["rerank"] else "–", c["mode"], kind, c["clients"],
                     _fmt(c["req_per_s"], 2), _fmt(c["p50_ms"]), _fmt(c["p95_ms"]), _fmt(c["p99_ms"]), statuses,
                     f"{c['wrong']}/{c['checked']}", _fmt(c.get("requests_per_batch"), 1),
                     _fmt(None if c.get("cache_hit_rate") is None else 100 * c["cache_hit_rate"]),
                     _fmt(c["healthz_p99_ms"], 1)])
    return markdown_table(["re-rank", "mode", "queries", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms",
                           "non-200", "wrong/checked", "req/batch", "cache hit %", "healthz p99 ms"], rows)


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration per cell")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--modes", default="before,after")
    parser.add_argument("--rerank", choices=("both", "on", "off"), default="both")
    parser.add_argument("--rerank-top", type=int, default=20)
    parser.add_argument("--reference", type=int, default=40, help="queries whose re-ranked answers are checked")
    parser.add_argument("--after-flags", default=AFTER_FLAGS, help="serve flags of the 'after' mode")
    parser.add_argument("--cache-queries", type=int, default=10, help="repeated-query row (0 = skip)")
    parser.add_argument("--overload-clients", type=int, default=48, help="deliberate overload row (0 = skip)")
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--home", default=None, help="reuse the index built in this folder")
    parser.add_argument("--out", default="serve_load.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    pool = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.rerank]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or scratch
        index = f"scifact-l{args.layer}"
        if not (Path(home) / "aliases" / f"{index}.json").is_file():
            build(home, args.layer, env)
        run = Run(args, home, index, env, pool)
        for rerank in settings:
            run_setting(run, rerank)
    for cell in run.cells:
        cell["rerank_top"] = args.rerank_top if cell["rerank"] else None
    payload = {"args": vars(args), "layer": args.layer, "load_average_before": load_before,
               "load_average_after": os.getloadavg(), "cells": run.cells}
    print(f"\n`ceindex serve` on SciFact (5,183 docs, embedded, layer {args.layer}), fixture CE, k=10, BM25 + k-NN RRF; "
          f"{args.seconds:g} s per cell; clients, prober and server on the same 2 cores; "
          f"load average before/after {load_before[0]:.1f}/{os.getloadavg()[0]:.1f}")
    print(table(run.cells))
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
