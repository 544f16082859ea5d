"""Throughput of the whole service on this machine, every figure from one run.

    .venv/bin/python bench/throughput.py                # ~15 minutes on 2 cores; appends to docs/BENCHMARKS.md

Measures, on a corpus of real photos cropped and rescaled to 2-6 MP JPEGs (made here,
never committed):
  (a) a seed-style pipeline in its own process: one image at a time, full decode,
      Resize((224, 224)), eager torch, default threads;
  (b) the handler's own decode + model code in a loop without TorchServe, best batch;
      (b-model) the model stage alone on ready tensors, with its FLOP/s;
  (c) end to end, cold: TorchServe started by serve.sh as the README says, then the
      whole `python client/rank.py` command on the corpus with an empty store;
  (d) the same command again with the store filled;
  (e) top-10 query time over 100k and 1M stored vectors in SQLite, 100k in pgvector;
and the bf16 mode that config/model-config.yaml offers: its (b), its (c), and the
cosine of its embeddings against fp32 over the corpus. For (c) it also counts the CPU
seconds of the TorchServe worker, the Java frontend and the client, which share the cores.
ResNet18 timings use random weights (the published ones cannot be downloaded here;
speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

from devtools import REPO
from devtools.machine import machine
from devtools.photos import CAMERA_CORPUS, camera_corpus, pixels
from devtools.processes import children_cpu_seconds, cpu_seconds, is_worker, peak_rss, workers_of
from devtools.torchserve import TorchServe, build_archive
from devtools.weights import random_resnet18_weights

GFLOP_PER_IMAGE = {"resnet18": 3.63, "efficientnet_lite0": 0.80}

SEED_BASELINE = r"""
import sys, time, torch, torchvision, torchvision.transforms as T
from pathlib import Path
from PIL import Image
files, weights = sorted(Path(sys.argv[1]).glob("*.jpg")), sys.argv[2]
model = torchvision.models.resnet18()
model.load_state_dict(torch.load(weights, weights_only=True)); model.eval()
tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
start = time.perf_counter()
with torch.no_grad():
    for f in files:
        model(tf(Image.open(f).convert("RGB")).unsqueeze(0))
print(len(files) / (time.perf_counter() - start))
"""


def wall(command: list[str], **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS in bytes, result) of one child process, start-up included."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    peak = 0
    while process.poll() is None:  # VmHWM, not getrusage: a child's ru_maxrss includes this process's
        try:
            peak = max(peak, peak_rss(process.pid))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    out, err = process.communicate()
    result = subprocess.CompletedProcess(command, process.returncode, out, err)
    assert result.returncode == 0, err[-3000:]
    return seconds, peak, result


def archive(arch: str, store: Path, weights: Path | None, config: Path | None = None, name: str = "") -> str:
    """Builds ``<name>.mar`` (default ``<arch>-embed``) into ``store``; returns its name."""
    name = name or f"{arch}-embed"
    args = ["--arch", arch, "--name", name]
    if config:
        args += ["--config", str(config)]
    if weights:
        args += ["--weights", str(weights), "--allow-unverified-weights"]
    build_archive(store, *args)
    return name


def in_process(model_dir: Path, files: list[Path], batch_sizes: list[int]) -> tuple[dict[int, float], float, dict]:
    """(b): img/s per batch size through Pipeline; (b-model): the engine alone at the best size."""
    from imgsim.pipeline import Pipeline, PipelineConfig

    config_file = next(model_dir.glob("*.yaml"))
    settings = yaml.safe_load(config_file.read_text())
    config = PipelineConfig.from_mapping(settings.get("handler", {}))
    torch.set_num_threads(config.torch_threads or os.cpu_count())
    pipeline = Pipeline.from_archive(model_dir, torch.device("cpu"), config)
    blobs = [f.read_bytes() for f in files]
    rates = {}
    for size in batch_sizes:
        pipeline([{f"{i}": blobs[i] for i in range(min(size, len(blobs)))}])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(blobs), size):
            replies = pipeline([{f"{j}": blobs[j] for j in range(i, min(i + size, len(blobs)))}])
            assert replies[0].status == 200
        rates[size] = len(blobs) / (time.perf_counter() - start)
    best = max(rates, key=rates.get)
    x = torch.randn(best, 3, pipeline.spec.input_size, pipeline.spec.input_size)
    pipeline.engine(x)
    rounds, start = 20, time.perf_counter()
    for _ in range(rounds):
        pipeline.engine(x)
    model_rate = rounds * best / (time.perf_counter() - start)
    return rates, model_rate, {"engine": config.engine, "precision": config.precision, "best_batch": best}


def cosines(fp32_dir: Path, other_dir: Path, files: list[Path], batch: int = 32) -> np.ndarray:
    """Per photo of the corpus, the cosine between the embeddings of two unpacked archives."""
    from imgsim.pipeline import Pipeline, PipelineConfig

    vectors = []
    for model_dir in (fp32_dir, other_dir):
        settings = yaml.safe_load(next(model_dir.glob("*.yaml")).read_text())
        pipeline = Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig.from_mapping(settings["handler"]))
        rows = []
        for i in range(0, len(files), batch):
            reply = pipeline([{f.name: f.read_bytes() for f in files[i : i + batch]}])[0]
            rows += [item["embedding"] for item in json.loads(reply.body)]
        vectors.append(np.asarray(rows, dtype=np.float64))
    a, b = vectors
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def bf16_config(work: Path) -> Path:
    """config/model-config.yaml with the bf16 mode it documents switched on."""
    settings = yaml.safe_load((REPO / "config" / "model-config.yaml").read_text())
    settings["handler"].update(engine="eager", precision="bf16")
    path = work / "model-config-bf16.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def served(model_store: Path, model: str, files: list[Path], workdir: Path, batch: int, concurrency: int) -> dict:
    """(c) and (d): the README's commands, timed whole, with peak RSS of workers and client."""
    server = TorchServe.start(workdir, model_store, (model,))
    try:
        store = workdir / f"store-{model}.sqlite"
        command = [sys.executable, str(REPO / "client" / "rank.py"), "--images_folder", str(files[0].parent),
                   "--ref_image", files[0].name, "--url", server.url, "--model", model, "--store", str(store),
                   "--quiet", "--token-file", str(server.key_file), "--batch-size", str(batch),
                   "--concurrency", str(concurrency)]  # fmt: skip
        frontend = psutil.Process(server.frontend_pid())
        serving = [frontend, *workers_of(frontend.pid)]
        before, children = [cpu_seconds(p) for p in serving], children_cpu_seconds()
        cold, cold_rss, result = wall(command, cwd=workdir)
        cpu = {"client": children_cpu_seconds() - children}
        for process, start in zip(serving, before):
            role = "worker" if is_worker(process) else "frontend"
            cpu[role] = cpu.get(role, 0.0) + cpu_seconds(process) - start
        assert f"sent {len(files)} to the server" in result.stderr, result.stderr
        warm, warm_rss, result = wall(command, cwd=workdir)
        assert "sent 0 to the server" in result.stderr, result.stderr
        worker_peak = max(peak_rss(pid) for pid in server.worker_pids())
    finally:
        server.stop()
    return {"cold_s": cold, "warm_s": warm, "client_peak_rss": max(cold_rss, warm_rss), "worker_peak_rss": worker_peak,
            "cold_cpu": cpu}  # fmt: skip


def _cpu_row(cpu: dict) -> str:
    return " / ".join(f"{cpu.get(role, 0.0):.2f}" for role in ("worker", "frontend", "client"))


def store_queries(sizes: list[int], pg_size: int, dim: int = 512) -> dict:
    """(e): median top-10 query time with the store open, over random unit vectors."""
    from client.store import open_store

    identity = {"architecture": "bench", "weights_sha256": "0" * 64, "embedding_dim": dim, "handler_version": "0"}
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="imgsim-store-bench-") as tmp:
        store = open_store(Path(tmp) / "bench.sqlite")
        filled = 0
        for size in sorted(sizes):
            filled = _fill(store, identity, filled, size, rng, dim)
            results[f"sqlite_{size}"] = _query_ms(store, identity, rng, dim)
        store.close()
    if pg_size:
        from devtools.postgres import running_postgres

        with running_postgres("-c shared_buffers=2GB -c maintenance_work_mem=2GB") as url:
            store = open_store(url)
            _fill(store, identity, 0, pg_size, rng, dim)
            results[f"pgvector_{pg_size}"] = _query_ms(store, identity, rng, dim)
            store.close()
    return results


def _fill(store, identity: dict, start: int, end: int, rng, dim: int, chunk: int = 50_000) -> int:
    for lo in range(start, end, chunk):
        n = min(chunk, end - lo)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [{"sha256": f"{i:064x}", "embedding": v, "predictions": []} for i, v in zip(range(lo, lo + n), vectors)]
        store.put_many(identity, items)
    return end


def _query_ms(store, identity: dict, rng, dim: int, queries: int = 20) -> float:
    store.search(identity, rng.normal(size=dim).astype(np.float32), 10)  # loads the vectors
    times = []
    for _ in range(queries):
        q = rng.normal(size=dim).astype(np.float32)
        start = time.perf_counter()
        store.search(identity, q, 10)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", choices=sorted(GFLOP_PER_IMAGE))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--client-batch", type=int, default=32, help="rank.py's default")
    parser.add_argument("--concurrency", type=int, default=3, help="rank.py's default")
    parser.add_argument("--store-sizes", default="100000,1000000")
    parser.add_argument("--pg-size", type=int, default=100_000, help="0 skips pgvector")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 mode's (b), (c) and cosine")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    files = camera_corpus(args.images)
    megapixels = [pixels(f) / 1e6 for f in files]
    print(f"corpus: {len(files)} JPEGs, {min(megapixels):.1f}-{max(megapixels):.1f} MP, "
          f"{sum(f.stat().st_size for f in files) / len(files) / 1e6:.2f} MB on average", file=sys.stderr)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-"))
    weights = None
    if args.arch == "resnet18":
        weights = random_resnet18_weights(work / "resnet18-random.pth")
    model_store = work / "model_store"
    model = archive(args.arch, model_store, weights)
    model_dir = work / "unpacked"
    zipfile.ZipFile(model_store / f"{model}.mar").extractall(model_dir)

    print("(a) seed-style baseline ...", file=sys.stderr)
    a = float(wall([sys.executable, "-c", SEED_BASELINE, str(CAMERA_CORPUS), str(weights)])[2].stdout) if weights else None
    print("(b) in-process ceiling ...", file=sys.stderr)
    rates, model_rate, engine = in_process(model_dir, files, [int(s) for s in args.batch_sizes.split(",")])
    b = max(rates.values())
    print("(c, d) TorchServe + rank.py ...", file=sys.stderr)
    run = served(model_store, model, files, work, args.client_batch, args.concurrency)
    c, d = len(files) / run["cold_s"], len(files) / run["warm_s"]
    half = None
    if not args.no_bf16:
        print("bf16 mode: (b), (c) and embedding cosine vs fp32 ...", file=sys.stderr)
        half_model = archive(args.arch, model_store, weights, bf16_config(work), f"{model}-bf16")
        half_dir = work / "unpacked-bf16"
        zipfile.ZipFile(model_store / f"{half_model}.mar").extractall(half_dir)
        half_rates, _, half_engine = in_process(half_dir, files, [engine["best_batch"]])
        half_run = served(model_store, half_model, files, work, args.client_batch, args.concurrency)
        half = {"b": max(half_rates.values()), "c": len(files) / half_run["cold_s"], "run": half_run,
                "engine": half_engine, "cosine": cosines(model_dir, half_dir, files)}  # fmt: skip
    print("(e) store queries ...", file=sys.stderr)
    e = store_queries([int(s) for s in args.store_sizes.split(",")], args.pg_size)
    shutil.rmtree(work, ignore_errors=True)

    gflops = model_rate * GFLOP_PER_IMAGE[args.arch]
    rows = [
        ("(a) seed-style, one image at a time, eager, default threads", f"{a:.1f} img/s" if a else "n/a", ""),
        (f"(b) handler decode + {engine['engine']} {engine['precision']} in process, batch {engine['best_batch']}",
         f"{b:.1f} img/s", "per batch size: " + ", ".join(f"{k}: {v:.1f}" for k, v in rates.items())),
        ("(b-model) model stage alone", f"{model_rate:.1f} img/s", f"{gflops:.0f} GFLOP/s"),
        ("(c) cold: TorchServe + `python client/rank.py`, empty store", f"{c:.1f} img/s",
         f"{run['cold_s']:.1f} s for {len(files)} images, process start included"),
        ("(c) CPU seconds in the cold run: worker / frontend (Java) / client", _cpu_row(run["cold_cpu"]),
         f"of {run['cold_s'] * os.cpu_count():.1f} core-seconds in that time"),
        ("(d) warm: the same command, store filled", f"{d:.1f} img/s", f"{run['warm_s']:.2f} s"),
        *[(f"(e) top-10 query, {k.replace('_', ', ')} vectors", f"{v:.1f} ms", "median of 20, store open")
          for k, v in e.items()],
        *([] if half is None else [
            (f"(b) bf16 mode ({half['engine']['engine']} bf16) in process, batch {half['engine']['best_batch']}",
             f"{half['b']:.1f} img/s", ""),
            ("(c) bf16 mode, cold", f"{half['c']:.1f} img/s", f"{half['run']['cold_s']:.1f} s; CPU s "
             + _cpu_row(half["run"]["cold_cpu"])),
            ("bf16 embedding cosine vs fp32, over the corpus", f"min {half['cosine'].min():.5f}",
             f"mean {half['cosine'].mean():.6f}, {len(half['cosine'])} photos"),
        ]),
        ("peak RSS: TorchServe worker / client", f"{run['worker_peak_rss'] / 2**20:.0f} MiB / "
         f"{run['client_peak_rss'] / 2**20:.0f} MiB", ""),
    ]  # fmt: skip
    ratios = [
        ("(c) / (a), target >= 2", f"{c / a:.2f}" if a else "n/a"),
        ("(c) / (b), target >= 0.8", f"{c / b:.2f}"),
        ("(b-model), target >= 100 img/s (70% of fp32 peak) for resnet18", f"{model_rate:.1f}"),
        ("(c) time / (d) time, target >= 5", f"{run['cold_s'] / run['warm_s']:.1f}"),
        *([] if half is None else [
            ("bf16 mode: (c) / (a), target >= 3", f"{half['c'] / a:.2f}" if a else "n/a"),
            ("bf16 mode: (c) / (b), target >= 0.8", f"{half['c'] / half['b']:.2f}"),
            ("bf16 mode: min embedding cosine vs fp32, target >= 0.999", f"{half['cosine'].min():.5f}"),
        ]),
    ]
    table = "| measurement | result | detail |\n| --- | --- | --- |\n" + "".join(f"| {m} | {r} | {x} |\n" for m, r, x in rows)
    table += "\n| ratio | value |\n| --- | --- |\n" + "".join(f"| {m} | {v} |\n" for m, v in ratios)
    command = "python bench/throughput.py " + " ".join(sys.argv[1:])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {stamp}: {args.arch}, {len(files)} photos of {min(megapixels):.1f}-{max(megapixels):.1f} MP\n\n"
               f"Machine: {machine().describe()}\n\nCommand: `{command.strip()}`\n\n{table}")  # fmt: skip
    print(section)
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    if not args.docs.exists():
        args.docs.write_text("# Benchmarks\n\nEach section is one run of `bench/throughput.py`, appended by the script.\n")
    with open(args.docs, "a", encoding="utf-8") as f:
        f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
