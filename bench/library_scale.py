"""Library scale: time and peak memory of the client at 10k to 1M images, each step in a fresh process.

    .venv/bin/python bench/library_scale.py --quick                 # smoke run, about a minute
    .venv/bin/python bench/library_scale.py --write-docs            # the sizes of docs/SCALE.md
    .venv/bin/python bench/library_scale.py --library-sizes 10000 --search-sizes 100000 --group-sizes 0 --pg-sizes 0

Makes, under --cache (never in the repository, reused by later runs):
  libraries of N unique files: a small real JPEG followed by random bytes up to --file-kb, so
  each file hashes differently and reads like a photo (not sparse: zeros would flatter the hash);
  SQLite stores of N synthetic 1280-d float32 vectors (EfficientNet-Lite0's width), with the
  server's endpoint recorded, so rank.py finds every vector without a server.
Then measures, each in its own process (wall seconds, and that process's own peak RSS, VmHWM):
  warm rerun   rank.py over a library whose every file is stored (what the code does today);
  search open  rank.py --store STORE --ref_image REF in a fresh process (opening the store included);
  search       median ms of one query once the store is open (the store API, 50 queries);
  grouping     client.duplicates.find_groups over N vectors, 1% of them edited copies;
  pg fill      PostgresStore.bulk_load of N vectors into a fresh embedded PostgreSQL, index included,
               and put_many in batches of 1,000 (the per-row index path) at --pg-row-size for contrast.
A size whose step would not fit the disk or the time is skipped with the reason in the table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 1280
IDENTITY = {"architecture": "efficientnet_lite0", "weights_sha256": "57" * 32, "embedding_dim": DIM,
            "handler_version": "1.0.0"}  # fmt: skip
# the other width the search is measured at: resnet18's, the product's default model
IDENTITIES = {DIM: IDENTITY, 512: {**IDENTITY, "architecture": "resnet18", "embedding_dim": 512}}
MODEL_NAME = "resnet18-embed"  # rank.py's default --model: the endpoint the stores record
PER_FOLDER = 1000  # files per folder of a library, like a camera's DCIM folders
CHUNK = 10_000  # rows per store write
DUPLICATE_SHARE = 0.01  # rows of a grouping run that are edited copies of another row
OLD_MTIME = 1_700_000_000  # 2023-11-14: library files are old, as a scan that remembers states expects


# --- what the steps run on -----------------------------------------------------------------------


def synthetic_vectors(start: int, n: int, dim: int = DIM) -> np.ndarray:
    """Rows start..start+n of a reproducible set of random vectors (by chunk, so any range is cheap)."""
    out = np.empty((n, dim), dtype=np.float32)
    for row in range(start, start + n, CHUNK):
        block = row // CHUNK
        vectors = np.random.default_rng(block).standard_normal((CHUNK, dim), dtype=np.float32)
        lo, hi = row - block * CHUNK, min(CHUNK, start + n - block * CHUNK)
        out[row - start : row - start + hi - lo] = vectors[lo:hi]
    return out


def sha_of_row(i: int) -> str:
    return hashlib.sha256(f"library-scale row {i}".encode()).hexdigest()


def small_jpeg() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_library(root: Path, n: int, file_kb: int) -> Path:
    """N unique files of file_kb KiB under root/library-N-KBkb (made once); shas.txt lists their sha256s."""
    folder = root / f"library-{n}-{file_kb}kb"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    head = small_jpeg()
    rng = np.random.default_rng(n)
    shas = []
    for i in range(n):
        sub = folder / f"{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True)
            print(f"  library {n:,}: {i:,} files", file=sys.stderr, end="\r")
        data = head + rng.bytes(max(0, file_kb * 1024 - len(head)))  # after EOI: ignored by decoders
        (sub / f"IMG_{i:07d}.jpg").write_bytes(data)
        os.utime(sub / f"IMG_{i:07d}.jpg", (OLD_MTIME, OLD_MTIME))  # a library's photos are not being written now
        shas.append(hashlib.sha256(data).hexdigest())
    (folder / ".shas.txt").write_text("\n".join(shas) + "\n")
    (folder / ".complete").write_text("")
    return folder


def make_sqlite_store(path: Path, shas: list[str], paths: list[str] | None = None, dim: int = DIM) -> Path:
    """A SQLite store holding one synthetic vector per sha (row order = synthetic_vectors order)."""
    if path.exists() and path.with_suffix(".complete").exists():
        return path
    from client.store.sqlite import SQLiteStore
    from client.torchserve_client import DEFAULT_URL

    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    with SQLiteStore(path) as store:
        store.remember_endpoint(DEFAULT_URL, MODEL_NAME, IDENTITIES[dim])
        for start in range(0, len(shas), CHUNK):
            block = synthetic_vectors(start, min(CHUNK, len(shas) - start), dim)
            label = [{"index": 1, "label": "goldfish", "probability": 0.5}]
            here = shas[start : start + CHUNK]
            items = [{"sha256": s, "embedding": v, "predictions": label} for s, v in zip(here, block, strict=True)]
            located = dict(zip(here, paths[start : start + CHUNK], strict=True)) if paths else None
            store.put_many(IDENTITIES[dim], items, located)
            print(f"  store {path.name}: {start + len(items):,} rows", file=sys.stderr, end="\r")
    path.with_suffix(".complete").write_text("")
    return path


def reference_image(root: Path) -> tuple[Path, str]:
    """A reference file (the first row of every collection store is its sha256)."""
    path = root / "reference.jpg"
    if not path.exists():
        path.write_bytes(small_jpeg() + b"library-scale reference")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def collection_store(root: Path, n: int, dim: int = DIM) -> Path:
    _, ref_sha = reference_image(root)
    shas = [ref_sha] + [sha_of_row(i) for i in range(1, n)]
    return make_sqlite_store(root / f"collection-{n}{'' if dim == DIM else f'-{dim}d'}.sqlite", shas, dim=dim)


# --- steps, each run in a fresh process: print one JSON object ----------------------------------


def step_search(store: Path, queries: int, dim: int = DIM) -> dict:
    from client.store import open_store

    q = synthetic_vectors(0, queries + 1, dim) + np.float32(0.1)
    with open_store(store) as opened:
        started = time.perf_counter()
        opened.search(IDENTITIES[dim], q[0], 10)  # opens the snapshot (or loads the matrix)
        first = time.perf_counter() - started
        times = []
        for vector in q[1:]:
            started = time.perf_counter()
            opened.search(IDENTITIES[dim], vector, 10)
            times.append((time.perf_counter() - started) * 1000)
    return {"first_s": first, "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def step_group(n: int, search: str) -> dict:
    from client.duplicates import Content, find_groups, thresholds_for

    vectors = synthetic_vectors(0, n)
    rng = np.random.default_rng(1)
    copies = rng.choice(n, int(n * DUPLICATE_SHARE), replace=False)
    originals = rng.integers(0, n, len(copies))
    # an edited copy: its original plus noise, cosine about 0.99
    vectors[copies] = vectors[originals] + 0.1 * rng.standard_normal((len(copies), DIM), dtype=np.float32)
    contents = [Content(sha_of_row(i), [(f"{i}.jpg", f"/nowhere/{i}.jpg")]) for i in range(n)]
    started = time.perf_counter()
    groups = find_groups(contents, vectors, thresholds_for(IDENTITY["architecture"]), hashes=lambda sha: None,
                         search=search)  # fmt: skip
    grouped = sum(len(g.members) for g in groups)
    return {"seconds": time.perf_counter() - started, "groups": len(groups), "grouped": grouped, "copies": len(copies)}


def step_pg_fill(url: str, n: int, bulk: bool) -> dict:
    from client.store.postgres import PostgresStore

    def chunks(size: int) -> Iterator[list[dict]]:
        for start in range(0, n, size):
            block = synthetic_vectors(start, min(size, n - start))
            yield [{"sha256": sha_of_row(start + i), "embedding": v, "predictions": [{"index": 1, "label": "x",
                    "probability": 0.5}]} for i, v in enumerate(block)]  # fmt: skip

    with PostgresStore(url) as store:
        backend = store._one("SELECT pg_backend_pid()")[0]
        started = time.perf_counter()
        if bulk:
            store.bulk_load(IDENTITY, chunks(CHUNK))
        else:
            for chunk in chunks(1000):
                store.put_many(IDENTITY, chunk)
        seconds = time.perf_counter() - started
        from devtools.processes import peak_rss

        server_rss = peak_rss(backend)
        count = store.count(IDENTITY)
        started = time.perf_counter()
        top = store.search(IDENTITY, synthetic_vectors(5, 1)[0], 1)[0][0]
        query_ms = (time.perf_counter() - started) * 1000
    return {"seconds": seconds, "rows": count, "backend_peak_rss": server_rss, "top1_ok": top == sha_of_row(5),
            "query_ms": query_ms}  # fmt: skip


STEPS = {"search": step_search, "group": step_group, "pg_fill": step_pg_fill}


# --- the parent: runs each step as a child, records wall time and peak RSS ---------------------------


# Runs a script as __main__ and writes its own peak RSS (VmHWM) to $RSS_FILE at exit. wait4's
# ru_maxrss would not do: Linux carries the forking parent's RSS into the child's maximum.
_MEASURED = (
    "import atexit, os, runpy, sys\n"
    "def _peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    open(os.environ['RSS_FILE'], 'w').write(status.split('VmHWM:')[1].split()[0])\n"
    "atexit.register(_peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_child(argv: list[str]) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MiB, stdout, stderr) of ``python SCRIPT ARGS`` in a fresh process; raises if it fails."""
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"library-scale-rss-{os.getpid()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RSS_FILE": str(rss_file)}
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", _MEASURED, *argv], cwd=ROOT, capture_output=True, env=env)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {child.returncode}:\n{child.stderr.decode()[-3000:]}")
    rss_kib = int(rss_file.read_text())
    rss_file.unlink()
    return wall, rss_kib / 1024, child.stdout.decode(), child.stderr.decode()


def run_step(name: str, **kwargs: object) -> tuple[float, float, dict]:
    wall, rss, out, _ = run_child([__file__, "--step", name, "--step-args", json.dumps(kwargs)])
    return wall, rss, json.loads(out.strip().splitlines()[-1])


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


Row = dict[str, object]


def measure_warm_rerun(cache: Path, sizes: list[int], file_kb: int) -> list[Row]:
    rows = []
    for n in sizes:
        need = n * file_kb * 1024 / 1e9 * 1.05 + n * DIM * 4.5 / 1e9
        if not (cache / f"library-{n}-{file_kb}kb" / ".complete").exists() and need > free_gb(cache) - 10:
            rows.append({"N": n, "skipped": f"needs {need:.0f} GB, {free_gb(cache):.0f} GB free"})
            continue
        print(f"warm rerun at {n:,} files: making the library", file=sys.stderr)
        library = make_library(cache, n, file_kb)
        shas = (library / ".shas.txt").read_text().split()
        files = [str(library / f"{i // PER_FOLDER:04d}" / f"IMG_{i:07d}.jpg") for i in range(n)]
        # a copy: what rank.py remembers (file states) must not carry over into the next bench run
        store = cache / "rerun-store.sqlite"
        for stale in cache.glob("rerun-store.sqlite*"):
            stale.unlink()
        shutil.copyfile(make_sqlite_store(cache / f"library-{n}-{file_kb}kb.sqlite", shas, files), store)
        argv = ["client/rank.py", "--images_folder", str(library), "--recursive", "--ref_image",
                files[0], "--store", str(store), "--format", "json", "--output", str(cache / "rank-out.json"),
                "--quiet"]  # fmt: skip
        runs = [run_child(argv) for _ in range(2)]
        said = [next((line.split(": ", 1)[1] for line in r[3].splitlines() if " read, " in line), "?") for r in runs]
        gb = n * file_kb * 1024 / 1e9
        rows.append({"N": n, "seconds": runs[1][0], "rss_mib": runs[1][1], "first_run_s": runs[0][0],
                     "first_rss_mib": runs[0][1], "GB_read": gb, "GB_per_s": gb / runs[0][0],
                     "first_said": said[0], "said": said[1]})  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def measure_search(cache: Path, sizes: list[int], dims: list[int]) -> list[Row]:
    rows = []
    reference, _ = reference_image(cache)
    for dim in dims:
        for n in sizes:
            need = n * (dim * 4 + 400) * 1.2 / 1e9 + n * dim / 1e9
            name = f"collection-{n}{'' if dim == DIM else f'-{dim}d'}"
            if not (cache / f"{name}.complete").exists() and need > free_gb(cache) - 10:
                rows.append({"N": n, "dim": dim, "skipped": f"needs {need:.0f} GB, {free_gb(cache):.0f} GB free"})
                continue
            print(f"collection search at {n:,} {dim}-d vectors: making the store", file=sys.stderr)
            store = collection_store(cache, n, dim)
            shutil.rmtree(store.with_name(store.name + "-vectors"), ignore_errors=True)  # derived: timed anew
            argv = ["client/rank.py", "--store", str(store), "--ref_image", str(reference), "--format",
                    "json", "--output", str(cache / "rank-out.json"), "--quiet"]  # fmt: skip
            first = run_child(argv)[:2]  # writes the snapshot (from sqlite.SNAPSHOT_FROM rows)
            opens = [run_child(argv)[:2] for _ in range(3)]
            hits = json.loads((cache / "rank-out.json").read_text())
            _, loop_rss, loop = run_step("search", store=str(store), queries=50, dim=dim)
            snapshot = store.with_name(store.name + "-vectors")
            rows.append({"N": n, "dim": dim, "seconds": statistics.median(o[0] for o in opens),
                         "rss_mib": max(o[1] for o in opens), "first_s": first[0], "first_rss_mib": first[1],
                         "query_ms": loop["median_ms"], "query_p90_ms": loop["p90_ms"], "rows_out": len(hits),
                         "store_GB": store.stat().st_size / 1e9,
                         "snapshot_GB": sum(f.stat().st_size for f in snapshot.rglob("*") if f.is_file()) / 1e9
                         if snapshot.is_dir() else 0.0})  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def measure_grouping(sizes: list[int], exact_limit: int) -> list[Row]:
    """Per N: the exact scan (up to ``exact_limit``) and the ANN search, where client.duplicates.ann exists."""
    try:
        from client.duplicates.ann import ANN_FROM
    except ImportError:
        ANN_FROM = None
    rows = []
    for n in sizes:
        methods = (["exact"] if n <= exact_limit else []) + (["ann"] if ANN_FROM is not None and n >= ANN_FROM else [])
        if not methods:
            rows.append({"N": n, "skipped": f"exact grouping is N^2: above --exact-group-limit {exact_limit:,}; "
                         "no ANN search (client.duplicates.ann) to run instead"})  # fmt: skip
        for method in methods:
            print(f"grouping {n:,} vectors ({method})", file=sys.stderr)
            wall, rss, out = run_step("group", n=n, search=method)
            rows.append({"N": n, "method": method, "seconds": out["seconds"], "process_s": wall, "rss_mib": rss,
                         "groups": out["groups"], "grouped": out["grouped"], "copies": out["copies"],
                         "rss_x_vectors": rss * 2**20 / (n * DIM * 4)})  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def measure_pg_fill(sizes: list[int], row_size: int) -> list[Row]:
    from devtools.postgres import running_postgres

    rows = []
    plans = [(n, True) for n in sizes] + ([(row_size, False)] if row_size else [])
    for n, bulk in plans:
        need = n * (DIM * 4 + DIM * 2 * 1.3 + 600) * 1.3 / 1e9 + min(16.0, n * DIM * 4 * 3 / 1e9)  # + WAL (max_wal_size)
        if need > free_gb(Path(os.environ.get("TMPDIR", "/tmp"))) - 10:
            rows.append({"N": n, "path": "bulk_load" if bulk else "put_many", "skipped": f"needs {need:.0f} GB"})
            continue
        print(f"PostgreSQL fill of {n:,} vectors ({'bulk_load' if bulk else 'put_many x 1,000'})", file=sys.stderr)
        # a server sized like a small dedicated one; checkpoints spaced so the fill is not mostly fsyncs
        with running_postgres("-c shared_buffers=1GB -c max_wal_size=16GB -c checkpoint_timeout=30min") as url:
            wall, rss, out = run_step("pg_fill", url=url, n=n, bulk=bulk)
        rows.append({"N": n, "path": "bulk_load" if bulk else "put_many x 1,000", "seconds": out["seconds"],
                     "per_100k_s": out["seconds"] * 1e5 / n, "rss_mib": rss,
                     "backend_rss_mib": out["backend_peak_rss"] / 2**20, "query_ms": out["query_ms"],
                     "top1_ok": out["top1_ok"]})  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr)
    return rows


# --- the report -----------------------------------------------------------------------------------


def growth(rows: list[Row], key: str) -> dict[int, str]:
    """Per row: how much ``key`` grew per 10x of N from the previous measured row."""
    measured = [r for r in rows if key in r]
    out = {}
    for prev, cur in zip(measured, measured[1:]):
        decades = np.log10(cur["N"] / prev["N"])  # type: ignore[operator]
        if decades > 0 and prev[key]:
            out[cur["N"]] = f"x{(cur[key] / prev[key]) ** (1 / decades):.1f}"  # type: ignore[operator]
    return out


def table(rows: list[Row], columns: list[tuple[str, str, str]]) -> str:
    """Markdown: N, the columns (key, header, format), growth per 10x of seconds and RSS."""
    t_growth, m_growth = growth(rows, "seconds"), growth(rows, "rss_mib")
    head = ["N", *[h for _, h, _ in columns], "time per 10x N", "memory per 10x N"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['N']:,} | not run: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        cells = [format(r[k], f) if k in r else "" for k, _, f in columns]
        grown = f" | {t_growth.get(r['N'], '')} | {m_growth.get(r['N'], '')} |"
        lines.append(f"| {r['N']:,} | " + " | ".join(cells) + grown)
    return "\n".join(lines)


def report(results: dict[str, list[Row]], args: argparse.Namespace, command: str, took: float) -> str:
    from devtools.machine import machine

    parts = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: `{command}`\n",
        f"Machine: {machine().describe()}. Cache: {args.cache} ({free_gb(args.cache):.0f} GB free after). "
        f"The whole run took {took / 60:.1f} min. Seconds are wall time of a fresh process unless the column "
        "says otherwise; RSS is that process's own peak (its VmHWM at exit), so each step's memory is its own.\n",
    ]
    if results.get("warm"):
        parts += [f"#### Warm rerun: `rank.py --images_folder LIB --recursive --store STORE` over a library whose "
                  f"every file's vector is stored\n\nFiles of {args.file_kb} KiB (a small JPEG and random bytes). "
                  "Two runs in a row on a fresh copy of the store: the first reads every file (no file states "
                  "remembered yet), the second is the warm rerun.\n",
                  table(results["warm"], [("seconds", "rerun s", ".1f"), ("rss_mib", "rerun peak RSS MiB", ".0f"),
                        ("said", "rerun: rank.py says", "s"), ("first_run_s", "first run s", ".1f"),
                        ("first_rss_mib", "first run RSS MiB", ".0f"), ("first_said", "first run: rank.py says", "s"),
                        ("GB_read", "GB in files", ".1f"), ("GB_per_s", "first run GB/s", ".2f")]), ""]  # fmt: skip
    if results.get("search"):
        parts += ["#### Collection search: `rank.py --store STORE --ref_image REF --format json` in a fresh process\n\n"
                  "The reference is stored, so no server is asked. Fresh process s: median of 3 runs, from process "
                  "start to exit (interpreter, imports, opening the store and its snapshot, search, output). "
                  "First run s: the run before those, which writes the snapshot (its folder is deleted first). "
                  "Query ms: median of 50 searches once the store is open (the store API).\n",
                  *[table([r for r in results["search"] if r.get("dim") == dim],
                          [("dim", "dim", "d"), ("seconds", "fresh process s", ".2f"),
                        ("rss_mib", "peak RSS MiB", ".0f"), ("query_ms", "query ms", ".1f"),
                        ("query_p90_ms", "p90 ms", ".1f"), ("first_s", "first run s", ".1f"),
                        ("first_rss_mib", "first run RSS MiB", ".0f"), ("store_GB", "store GB", ".2f"),
                        ("snapshot_GB", "snapshot GB", ".2f")]) + "\n"
                    for dim in dict.fromkeys(r.get("dim") for r in results["search"])], ""]  # fmt: skip
    if results.get("group"):
        parts += [f"#### Duplicate grouping: `client.duplicates.find_groups` over N vectors, {DUPLICATE_SHARE:.0%} "
                  "of them edited copies (cosine ~0.99)\n\nSeconds: the call alone; process s: with making the "
                  "vectors. Each copy joins one group of 2 (or more, when its original is a copy too).\n",
                  *[table([r for r in results["group"] if r.get("method", method) == method],
                          [("method", "method", "s"), ("seconds", "seconds", ".1f"), ("process_s", "process s", ".1f"),
                           ("rss_mib", "peak RSS MiB", ".0f"), ("rss_x_vectors", "RSS / vectors' bytes", ".2f"),
                           ("groups", "groups", "d"),
                           ("grouped", "images grouped", "d")]) + "\n"
                    for method in dict.fromkeys(r.get("method", "exact") for r in results["group"])], ""]  # fmt: skip
    if results.get("pg"):
        parts += ["#### PostgreSQL fill: a fresh embedded PostgreSQL 18 + pgvector, HNSW index included\n\n"
                  "`bulk_load`: chunks of 10,000 in one transaction, the index built once after. `put_many x 1,000`: "
                  "the per-row index path (batches under the bulk threshold). RSS: the client; backend: the "
                  "PostgreSQL process serving it.\n",
                  table(results["pg"], [("path", "path", "s"), ("seconds", "seconds", ".1f"),
                        ("per_100k_s", "s per 100k", ".0f"), ("rss_mib", "client RSS MiB", ".0f"),
                        ("backend_rss_mib", "backend RSS MiB", ".0f"), ("query_ms", "first query ms", ".0f")]),
                  ""]  # fmt: skip
    return "\n".join(parts)


def sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip() and int(float(s)) > 0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgsim-bench", help="libraries and stores")
    p.add_argument("--library-sizes", default="10000,100000")
    p.add_argument("--file-kb", type=int, default=256, help="size of each library file (default 256 KiB)")
    p.add_argument("--search-sizes", default="100000,1000000")
    p.add_argument("--search-dims", default=f"{DIM},512", help="vector widths for the search step")
    p.add_argument("--group-sizes", default="10000,100000,1000000")
    p.add_argument("--exact-group-limit", type=int, default=100_000)
    p.add_argument("--pg-sizes", default="10000,100000,1000000")
    p.add_argument("--pg-row-size", type=int, default=10_000, help="N for the per-row put_many contrast (0: none)")
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--write-docs", action="store_true", help="append the results to docs/SCALE.md")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--step-args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](**json.loads(args.step_args))))
        return 0
    if args.quick:  # small sizes for whatever was not given
        quick = {"library_sizes": "100,1000", "file_kb": 64, "search_sizes": "1000,10000", "group_sizes": "1000,10000",
                 "pg_sizes": "1000,5000", "pg_row_size": 1000}  # fmt: skip
        for name, value in quick.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    args.cache.mkdir(parents=True, exist_ok=True)
    command = "python bench/library_scale.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    plan = {
        "warm": lambda: measure_warm_rerun(args.cache, sizes(args.library_sizes), args.file_kb),
        "search": lambda: measure_search(args.cache, sizes(args.search_sizes), sizes(args.search_dims)),
        "group": lambda: measure_grouping(sizes(args.group_sizes), args.exact_group_limit),
        "pg": lambda: measure_pg_fill(sizes(args.pg_sizes), args.pg_row_size),
    }
    results: dict[str, list[Row]] = {}
    for name, measure in plan.items():
        results[name] = measure()
        # kept if a later step fails
        (args.cache / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results, args, command, time.perf_counter() - started)
    print(text)
    if args.write_docs:
        docs = ROOT / "docs" / "SCALE.md"
        with docs.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
