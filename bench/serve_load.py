"""`ceindex serve` under concurrent load: throughput, latency, errors and wrong answers by number of clients.

    .venv/bin/python bench/serve_load.py [--queries 100] [--seconds 20] [--clients 1,2,4,8] [--layers 0,1]

Builds the SciFact corpus with the fixture cross-encoder (embedded backend, one index per layer), starts the real
`ceindex serve` in a subprocess per index, takes each query's single-client answer as the reference, then runs
C client threads for a fixed time each and counts requests/s, p50/p95 latency, non-200 answers and answers
that differ from the reference. All traffic stays on 127.0.0.1; every loop is bounded by --seconds.
Writes bench/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURE_CE, REPO, SCIFACT, markdown_table, require, write_json  # noqa: E402

from ceindex.evaluation.topics import load_topics  # noqa: E402


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

    server = subprocess.Popen(_ceindex("-q", "serve", "--index", index, "--home", home, "--port", str(port), *extra,
                                       env=env), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"ceindex serve did not start: {server.stderr.read().decode()[-2000:]}")


def answer(client, url: str, query: str) -> tuple[int, list[str] | None]:
    response = client.post(url, json={"query": query, "k": 10}, timeout=300)
    if response.status_code != 200:
        return response.status_code, None
    return 200, [hit["id"] for hit in response.json()["results"][0]["hits"]]


def load(url: str, queries: list[str], reference: list[list[str]], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop(seed: int) -> None:
        with httpx.Client() as client:
            i = seed
            while time.perf_counter() < stop_at:
                qi = i % len(queries)
                begin = time.perf_counter()
                try:
                    status, ids = answer(client, url, queries[qi])
                except httpx.HTTPError:
                    status, ids = -1, None
                elapsed = (time.perf_counter() - begin) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(elapsed)
                        wrong[0] += ids != reference[qi]
                i += clients

    begin = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    ok = statuses.get(200, 0)
    return {"clients": clients, "ok": ok, "errors": sum(n for s, n in statuses.items() if s != 200),
            "statuses": {str(k): v for k, v in statuses.items()}, "wrong": wrong[0], "req_per_s": ok / wall,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100, help="first N SciFact test queries, cycled")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration per (index, clients) cell")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--layers", default="0,1")
    parser.add_argument("--rerank", action="store_true", help="re-rank top 20 (slow: ~1-2 s per query on 2 cores)")
    parser.add_argument("--home", default=None, help="reuse indexes built in this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require(SCIFACT)
    require(FIXTURE_CE)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    queries = list(load_topics(SCIFACT, "test").queries.values())[: args.queries]
    search_flags = ["--rerank", "--rerank-top", "20"] if args.rerank else ["--no-rerank"]
    rows, payload = [], {"queries": len(queries), "seconds": args.seconds, "rerank": args.rerank, "cells": []}
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or scratch
        for layer in (int(x) for x in args.layers.split(",")):
            index = f"scifact-l{layer}" if args.home else build(home, layer, env)
            port = _free_port()
            server = start_server(home, index, port, env, search_flags)
            url = f"http://127.0.0.1:{port}/search"
            try:
                import httpx

                with httpx.Client() as client:
                    reference = [answer(client, url, q)[1] for q in queries]
                for clients in (int(x) for x in args.clients.split(",")):
                    cell = load(url, queries, reference, clients, args.seconds) | {"layer": layer}
                    payload["cells"].append(cell)
                    rows.append([layer, clients, f"{cell['req_per_s']:.1f}", f"{cell['p50_ms']:.0f}",
                                 f"{cell['p95_ms']:.0f}", cell["errors"], cell["wrong"]])
                    print(json.dumps(cell), flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)
    mode = "re-rank top 20" if args.rerank else "no re-rank"
    print(f"\n`ceindex serve` on SciFact (5,183 docs, embedded), fixture CE, k=10, BM25 + k-NN RRF, {mode}; "
          f"{args.seconds:.0f} s per cell, clients and server on the same 2 cores")
    print(markdown_table(["layer", "clients", "req/s", "p50 ms", "p95 ms", "errors", "wrong answers"], rows))
    print(f"wrote {write_json('serve_load.json' if not args.rerank else 'serve_load_rerank.json', payload)}")


if __name__ == "__main__":
    main()
