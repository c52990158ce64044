"""Scale plan, measured (issue 16): what building, storing and searching 1M and 8.8M documents costs, and which part
dominates, for CPU builders, one GPU, and N GPU builders (``--slice I/N``) into a 3-node cluster.

Parts (``--parts``, each bounded; the defaults fit a few minutes each on the 2-core machine):

  encode    CPU seconds per document (torch on --threads threads) of CE layer 0 and CE layer 1 (self-pair, the
            fixture CE) and a DE-2 CE (untrained, built by ``ceindex distill``'s layer copy: weights do not change
            speed) on real MS MARCO passages (the TREC DL19 pool); their average length in words and tokens.
  write     bulk write throughput into one OpenSearch 2.19 test node through ceindex's own bulk path
            (``OpenSearchBackend.write``: docs/s, MB/s of bulk JSON), and index size per document from
            ``_cat/indices`` after a force-merge to one segment, for --write-docs synthetic documents (MS MARCO
            passage texts, random unit vectors); the size is split by also writing the same documents without the
            vector in ``_source`` and with no vector at all.
  embedded  the embedded store with --embedded-docs synthetic documents (default 1M) in a child process: write and
            seal time, peak RSS, disk, and exact k-NN and BM25 latency.

The projection for 1M and 8.8M documents takes the GPU rates from bench/results/gpu.json (one H200, end-to-end,
max_length 128: an MS MARCO self-pair input is about that long). Writes JSON to bench/results/scale.json.

    flock /tmp/ceindex-bench.lock .venv/bin/python bench/scale_bench.py
    ... --parts encode,write --write-docs 5000 --encode-docs 64      # a quick run
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DL19, FIXTURE_CE, REPO, RESULTS, markdown_table, require, write_json  # noqa: E402

from ceindex.backends.base import BuildState, IndexSettings  # noqa: E402
from ceindex.backends.names import physical_name  # noqa: E402
from ceindex.data.beir import doc_text, read_corpus  # noqa: E402
from ceindex.data.corpus import Document  # noqa: E402
from ceindex.models.base import EncoderDescription  # noqa: E402

log = logging.getLogger("scale_bench")
DIMS = 384  # MiniLM width: the fixture CE, its early layers and the DE-2 CE
MSMARCO_PASSAGES = 8_841_823
TARGETS = (1_000_000, MSMARCO_PASSAGES)
GPU_LENGTH = 128


# ----------------------------------------------------------------------------------------------- inputs
def passages() -> list[str]:
    """The DL19 pool's MS MARCO passages (title + text as ceindex embeds them)."""
    return [doc_text(d) for d in read_corpus(require(DL19))]


def synthetic(texts: list[str], start: int, count: int, rng: np.random.Generator) -> tuple[list[Document], np.ndarray]:
    """Documents ``s<start>``.. with passage texts (cycled) and random unit vectors."""
    docs = [Document(id=f"s{i:08d}", text=texts[i % len(texts)]) for i in range(start, start + count)]
    vectors = rng.standard_normal((count, DIMS), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return docs, vectors


def batches(texts: list[str], total: int, size: int, seed: int = 0) -> Iterator[tuple[list[Document], np.ndarray]]:
    rng = np.random.default_rng(seed)
    for start in range(0, total, size):
        yield synthetic(texts, start, min(size, total - start), rng)


def synthetic_state(alias: str) -> BuildState:
    encoder = EncoderDescription(kind="ce-layer", model="synthetic", weights_sha256="-", dims=DIMS)
    return BuildState(physical_name(alias), alias, encoder, "scale-bench")


# ----------------------------------------------------------------------------------------------- encode
def measure_encode(texts: list[str], docs: int, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    from gpu_bench import untrained_de2ce

    from ceindex.models import EncoderConfig, load_encoder

    torch.set_num_threads(threads)
    sample = texts[:docs]
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    de2ce, _ = untrained_de2ce(FIXTURE_CE, work)
    common = dict(max_length=256, batch_size=32, device="cpu")
    encoders = {
        "CE layer 0 (self-pair)": load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=0, **common)),
        "CE layer 1 (self-pair)": load_encoder(EncoderConfig(model=str(FIXTURE_CE), layer=1, **common)),
        "DE-2 CE": load_encoder(EncoderConfig(kind="dual", model=str(de2ce), **common)),
    }
    from transformers import AutoTokenizer

    tokens = [len(ids) for ids in AutoTokenizer.from_pretrained(str(FIXTURE_CE))(sample, add_special_tokens=False)["input_ids"]]
    for encoder in encoders.values():  # warm-up
        encoder.encode(sample[:32])
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):  # interleaved, so a load change hits every encoder alike
        for name, encoder in encoders.items():
            begin = time.perf_counter()
            encoder.encode(sample)
            seconds[name].append(time.perf_counter() - begin)
    # the fastest repeat is the one the other jobs on a shared machine disturbed least; the projection uses it
    result = {name: {"ms_per_doc": round(1000 * min(s) / len(sample), 3), "docs_per_s": round(len(sample) / min(s), 1),
                     "median_docs_per_s": round(len(sample) / statistics.median(s), 1),
                     "seconds": [round(x, 3) for x in s]}
              for name, s in seconds.items()}
    return {"docs": len(sample), "threads": threads, "repeats": repeats, "batch_size": 32, "max_length": 256,
            "avg_words": round(statistics.mean(len(t.split()) for t in sample), 1),
            "avg_tokens": round(statistics.mean(tokens), 1), "encoders": result}


# ----------------------------------------------------------------------------------------------- write
# Lucene files by what they hold (``_stats/segments?include_segment_file_sizes``), after a merge to one segment
FILE_PARTS = {
    "vectors (.vec)": ("vec", "vem", "vemf"),
    "HNSW graph (.vex)": ("vex",),
    "vectors again as doc values (.dvd, k-NN exact search)": ("dvd", "dvm"),
    "stored _source: text + vector as JSON (.fdt)": ("fdt", "fdx", "fdm"),
    "BM25 inverted index (.tim .doc .pos .nvd ...)": ("tim", "tip", "tmd", "doc", "pos", "psm", "nvd", "nvm"),
}


def _file_sizes(client: Any, index: str) -> dict[str, int]:
    stats = client.indices.stats(index=index, metric="segments", include_segment_file_sizes=True)
    files = stats["indices"][index]["primaries"]["segments"]["file_sizes"]
    return {ext: int(info["size_in_bytes"]) for ext, info in files.items()}


def _merged(client: Any, index: str) -> tuple[int, float, int]:
    """(primary store bytes, force-merge seconds, segments before) once ``index`` is merged to one segment."""
    client.indices.refresh(index=index)
    segments = len(client.cat.segments(index=index, format="json"))
    begin = time.perf_counter()
    client.indices.forcemerge(index=index, max_num_segments=1, request_timeout=900)
    merge_s = time.perf_counter() - begin
    client.indices.refresh(index=index)
    row = client.cat.indices(index=index, format="json", bytes="b")[0]
    return int(row["pri.store.size"]), merge_s, segments


def _bulk_json_bytes(docs: list[Document], vectors: np.ndarray) -> int:
    """Bytes of the documents' JSON as a bulk request carries them (before the HTTP gzip)."""
    return sum(len(json.dumps({"doc_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata,
                               "vector": [float(x) for x in v]})) + 60 for d, v in zip(docs, vectors))


def measure_write(url: str, texts: list[str], docs: int, batch: int) -> dict[str, Any]:
    from ceindex.backends.opensearch import OpenSearchBackend
    from ceindex.config import OpenSearchConfig
    from mappings import index_body

    backend = OpenSearchBackend(OpenSearchConfig(url=url, timeout=300))
    client = backend.client
    settings = IndexSettings()
    full = synthetic_state("scale-full")
    backend.create(full, settings)
    write_s, sent = 0.0, 0
    for chunk, vectors in batches(texts, docs, batch):
        sent += _bulk_json_bytes(chunk, vectors)
        begin = time.perf_counter()
        refused = backend.write(full, chunk, vectors)
        write_s += time.perf_counter() - begin
        assert not refused, refused[:3]
    begin = time.perf_counter()
    count = backend.seal(full, settings)  # refresh on, refreshed, counted
    seal_s = time.perf_counter() - begin
    assert count == docs, (count, docs)
    full_bytes, merge_s, segments = _merged(client, full.physical)
    files = _file_sizes(client, full.physical)

    # the same documents with the vector excluded from _source (still indexed: .vec, .vex, .dvd)
    lean = synthetic_state("scale-lean")
    body = index_body(dims=DIMS, meta=lean.to_meta())
    body["mappings"]["_source"] = {"excludes": ["vector"]}
    client.indices.create(index=lean.physical, body=body)
    for chunk, vectors in batches(texts, docs, batch):
        backend.write(lean, chunk, vectors)
    lean_bytes, _, _ = _merged(client, lean.physical)
    lean_files = _file_sizes(client, lean.physical)
    for index in (full.physical, lean.physical):
        client.indices.delete(index=index)
    backend.close()
    split = {part: round(sum(files.get(ext, 0) for ext in exts) / docs, 1) for part, exts in FILE_PARTS.items()}
    split["other (.fnm, points, ...)"] = round(full_bytes / docs - sum(split.values()), 1)
    return {
        "docs": docs, "batch": batch, "write_s": round(write_s, 2), "docs_per_s": round(docs / write_s, 1),
        "bulk_json_mb_per_s": round(sent / write_s / 1e6, 2), "bulk_json_bytes_per_doc": round(sent / docs, 1),
        "seal_s": round(seal_s, 2), "segments_before_merge": segments, "forcemerge_s": round(merge_s, 2),
        "bytes_per_doc": round(full_bytes / docs, 1), "split_per_doc": split,
        "raw_float32_vector_bytes": DIMS * 4,
        "vector_excluded_from_source": {
            "bytes_per_doc": round(lean_bytes / docs, 1),
            "stored_fields_per_doc": round(sum(lean_files.get(e, 0) for e in ("fdt", "fdx", "fdm")) / docs, 1)},
        "lucene_files": files,
    }


# ----------------------------------------------------------------------------------------------- embedded
def _folder_bytes(folder: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            part = path.relative_to(folder).parts[0]
            sizes[part] = sizes.get(part, 0) + path.stat().st_size
    return sizes


def _rss_mb(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory in MB. Not getrusage's ru_maxrss: Linux keeps
    that across exec, so a child started by a parent holding the encoders would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {key} in /proc/self/status")


def embedded_child(docs: int, batch: int, queries: int, home: Path) -> dict[str, Any]:
    """Build and search the embedded store in this (child) process; peak RSS is this process's alone."""
    from ceindex.backends.embedded import EmbeddedBackend

    texts = passages()
    rss_start = _rss_mb("VmRSS")
    backend = EmbeddedBackend(home)
    state = synthetic_state("scale")
    backend.create(state, IndexSettings())
    write_s = 0.0
    for chunk, vectors in batches(texts, docs, batch):
        begin = time.perf_counter()
        backend.write(state, chunk, vectors)
        state.committed += len(chunk)
        backend.commit(state)
        write_s += time.perf_counter() - begin
    rss_write = _rss_mb()
    begin = time.perf_counter()
    count = backend.seal(state, IndexSettings())
    seal_s = time.perf_counter() - begin
    rss_build = _rss_mb()
    backend.publish(state)
    backend.close()
    assert count == docs, (count, docs)
    sizes = _folder_bytes(home / "indexes" / state.physical)

    searcher = EmbeddedBackend(home)
    begin = time.perf_counter()
    searcher.info("scale")
    open_s = time.perf_counter() - begin
    rng = np.random.default_rng(7)
    probes = rng.standard_normal((queries, DIMS), dtype=np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    searcher.knn("scale", probes[:1], 100)  # warm the page cache once
    single = []
    for probe in probes:
        begin = time.perf_counter()
        searcher.knn("scale", probe[None, :], 100)
        single.append(1000 * (time.perf_counter() - begin))
    begin = time.perf_counter()
    searcher.knn("scale", probes[:32] if queries >= 32 else probes, 100)
    batch_ms = 1000 * (time.perf_counter() - begin)
    words = [t.split()[:4] for t in texts[:queries]]
    bm25 = []
    for query in (" ".join(w) for w in words):
        begin = time.perf_counter()
        searcher.bm25("scale", [query], 100)
        bm25.append(1000 * (time.perf_counter() - begin))
    searcher.close()
    return {
        "docs": docs, "batch": batch, "write_s": round(write_s, 1), "write_docs_per_s": round(docs / write_s, 1),
        "seal_s": round(seal_s, 1), "rss_mb_at_start": round(rss_start), "peak_rss_mb_write": round(rss_write), "peak_rss_mb_build": round(rss_build),
        "peak_rss_mb_after_search": round(_rss_mb()), "disk_bytes": sizes, "disk_bytes_per_doc":
        round(sum(sizes.values()) / docs, 1), "open_s": round(open_s, 2), "knn_queries": queries,
        "knn_single_ms_p50": round(statistics.median(single), 1),
        "knn_single_ms_p95": round(float(np.percentile(single, 95)), 1),
        "knn_batch_queries": min(32, queries), "knn_batch_ms": round(batch_ms, 1),
        "bm25_single_ms_p50": round(statistics.median(bm25), 1),
    }


def measure_embedded(docs: int, batch: int, queries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scale-embedded-") as home:
        cmd = [sys.executable, __file__, "--embedded-child", home, "--embedded-docs", str(docs),
               "--embedded-batch", str(batch), "--queries", str(queries)]
        begin = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"embedded child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["total_s"] = round(time.perf_counter() - begin, 1)
        return result


# ----------------------------------------------------------------------------------------------- projection
def gpu_rates(path: Path) -> dict[str, dict[str, float]]:
    """End-to-end docs/s on one GPU at max_length GPU_LENGTH, per encoder and dtype, from gpu_bench's JSON."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rates: dict[str, dict[str, float]] = {}
    for row in data["results"]:
        if row["mode"] == "end-to-end" and row["max_length"] == GPU_LENGTH:
            rates.setdefault(row["encoder"], {})[row["dtype"]] = row["per_s"]
    return rates | {"_device": data.get("device", "GPU")}  # type: ignore[dict-item]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def project(results: dict[str, Any], gpu: dict[str, Any], cpu_builders: int, gpu_builders: int,
            nodes: int, replicas: int) -> list[dict[str, Any]]:
    """Time, disk and RAM for each target size and set-up, scaled linearly from the measured rates (the HNSW
    graph and the exact k-NN grow a little faster). The dominant part is the slower of encode and write: ceindex
    overlaps them (a batch is written while the next one encodes); the seal comes after both."""
    encode, write, embedded = results.get("encode"), results.get("write"), results.get("embedded")
    if not (encode and write):
        return []
    split = write["split_per_doc"]  # k-NN search wants the vectors and the graph in the page cache
    vector_ram = split["vectors (.vec)"] + split["HNSW graph (.vex)"]
    rows = []
    for name in ("CE layer 0 (self-pair)", "CE layer 1 (self-pair)", "DE-2 CE"):
        cpu_rate = encode["encoders"][name]["docs_per_s"]
        gpu_rate = gpu.get(name, {}).get("float32")
        setups: list[tuple[str, float, int]] = [("1 CPU builder (2 cores) -> 1 node", cpu_rate, 1),
                                                (f"{cpu_builders} CPU builders (--slice I/{cpu_builders}) -> "
                                                 f"{nodes}-node cluster", cpu_rate * cpu_builders, nodes)]
        if embedded:
            setups.insert(0, ("1 CPU builder (2 cores) -> embedded", cpu_rate, 0))
        if gpu_rate:
            setups += [("1 GPU -> 1 node", gpu_rate, 1),
                       (f"{gpu_builders} GPUs (--slice I/{gpu_builders}) -> {nodes}-node cluster",
                        gpu_rate * gpu_builders, nodes)]
        for setup, enc_rate, node_count in setups:
            for docs in TARGETS:
                row: dict[str, Any] = {"encoder": name, "setup": setup, "docs": docs, "encode_s": docs / enc_rate}
                if node_count == 0:  # embedded: SQLite writes overlap encoding; the seal (BM25, matrix) comes after
                    scale = docs / embedded["docs"]
                    row |= {"write_s": docs / embedded["write_docs_per_s"], "seal_s": embedded["seal_s"] * scale,
                            "disk_bytes": embedded["disk_bytes_per_doc"] * docs,
                            "ram": f"{embedded['peak_rss_mb_build'] * scale / 1e3:.1f} GB RSS to seal"}
                else:
                    copies = 1 + (replicas if node_count > 1 else 0)
                    row |= {"write_s": docs / (write["docs_per_s"] * node_count),
                            # a refresh of the last indexing buffer: it does not grow with the corpus
                            "seal_s": write["seal_s"],
                            "disk_bytes": write["bytes_per_doc"] * docs * copies,
                            "ram": f"{vector_ram * docs * copies / node_count / 1e9:.1f} GB page cache per node"}
                row["total_s"] = max(row["encode_s"], row["write_s"]) + row["seal_s"]
                row["dominant"] = "encode" if row["encode_s"] >= row["write_s"] else "write"
                rows.append(row)
    return rows


def projection_table(rows: list[dict[str, Any]]) -> str:
    headers = ["encoder", "set-up", "docs", "encode", "write", "seal", "total", "disk", "RAM", "dominant"]
    return markdown_table(headers, [[r["encoder"], r["setup"], f"{r['docs']:,}", _hours(r["encode_s"]),
                                     _hours(r["write_s"]), _hours(r["seal_s"]), _hours(r["total_s"]),
                                     _gb(r["disk_bytes"]), r["ram"], r["dominant"]] for r in rows])


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="encode,write,embedded", help="comma-separated: encode, write, embedded")
    parser.add_argument("--encode-docs", type=int, default=256, help="MS MARCO passages timed per encoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-docs", type=int, default=20_000, help="synthetic documents bulk-written to the node")
    parser.add_argument("--write-batch", type=int, default=1024)
    parser.add_argument("--cluster", default=None, help="an OpenSearch URL to write to (default: start the test node)")
    parser.add_argument("--embedded-docs", type=int, default=1_000_000)
    parser.add_argument("--embedded-batch", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=20, help="k-NN and BM25 queries timed on the embedded store")
    parser.add_argument("--cpu-builders", type=int, default=8, help="CPU builders in the projection")
    parser.add_argument("--gpu-builders", type=int, default=4, help="GPU builders in the projection")
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes in the projection")
    parser.add_argument("--replicas", type=int, default=1, help="replicas on the cluster in the projection")
    parser.add_argument("--gpu-json", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--reuse", action="store_true", help="keep the parts of scale.json that this run does not measure")
    parser.add_argument("--out", default="scale.json")
    parser.add_argument("--embedded-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embedded_child is not None:
        print(json.dumps(embedded_child(args.embedded_docs, args.embedded_batch, args.queries, args.embedded_child)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("ceindex", "transformers", "opensearch", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    previous = RESULTS / args.out
    results: dict[str, Any] = json.loads(previous.read_text())["results"] if args.reuse and previous.is_file() else {}
    texts = passages()
    load = {"loadavg_before": os.getloadavg()}
    if "encode" in parts:
        require(FIXTURE_CE)
        log.info("encode: %d passages x 3 encoders x %d repeats", args.encode_docs, args.repeats)
        results["encode"] = measure_encode(texts, args.encode_docs, args.threads, args.repeats)
    if "write" in parts:
        log.info("write: %d synthetic documents into %s", args.write_docs, args.cluster or "the OpenSearch 2.19 test node")
        node = None
        if args.cluster is None:
            from ceindex.testing.opensearch_node import OpenSearchNode

            node = OpenSearchNode()
        try:
            url = args.cluster or node.start()
            results["write"] = measure_write(url, texts, args.write_docs, args.write_batch)
        finally:
            if node is not None:
                node.stop()
    if "embedded" in parts:
        log.info("embedded: %d synthetic documents", args.embedded_docs)
        results["embedded"] = measure_embedded(args.embedded_docs, args.embedded_batch, args.queries)
    for part in parts:  # each part keeps the load it ran under (a --reuse run keeps the older parts' own)
        if part in results:
            results[part]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    load["loadavg_after"] = os.getloadavg()
    gpu = gpu_rates(args.gpu_json)
    rows = project(results, gpu, args.cpu_builders, args.gpu_builders, args.nodes, args.replicas)
    print(json.dumps(results, indent=2))
    if rows:
        print(f"\nprojection (GPU: {gpu['_device']}, end-to-end float32 at max_length {GPU_LENGTH}, bench/results/gpu.json)")
        print(projection_table(rows))
    path = write_json(args.out, {"command": " ".join(sys.argv), "load": load, "gpu_source": str(args.gpu_json.name),
                                 "gpu_rates": gpu, "results": results, "projection": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
