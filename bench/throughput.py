"""Throughput and start-up of the whole service on this machine, every figure from one run.

    .venv/bin/python bench/throughput.py                # ~20 minutes on 2 cores; appends to docs/BENCHMARKS.md
    .venv/bin/python bench/throughput.py --images 6 --phone-images 2 --kills 1 --store-sizes 1000 \\
        --pg-size 0 --no-fp32 --docs /tmp/bench-smoke.md   # a smoke run: a few minutes, not for docs/

Measures, on a corpus of real photos cropped and rescaled to 2-6 MP JPEGs with a camera
sensor's noise, 0.6-0.9 MB each like a camera's (devtools.photos.noisy_camera_corpus; made
here, never committed; --corpus plain: the same photos without noise, far smaller files):
  (a) a seed-style pipeline in its own process: one image at a time, full decode,
      Resize((224, 224)), eager torch, default threads;
  (b) the handler's own decode + model code in a loop without TorchServe, best batch;
      (b-model) the model stage alone on ready tensors, with its FLOP/s;
  (c) end to end, cold: TorchServe started by serve.sh as the README says, then the
      whole `python client/rank.py` command on the corpus with an empty store;
  (d) the same command again with the store filled;
  (e) top-10 query time over 100k and 1M stored vectors in SQLite, 100k in pgvector;
  phone: (a) and (c) on 12 MP phone-size photos of 3-5 MB (devtools.photos.phone_corpus);
  start: the time from `./serve.sh` to the ranked table, as a user typing the two commands
      sees it (serve.sh until the model answers an inference, then the cold rank.py);
  restart: worker start to READY (TorchServe's ts_log.log: worker process started to model
      loaded), and the seconds from `kill -9` of the worker until an inference is answered
      again, with no load and under load from a few clients; median of 3 kills each;
and an fp32 archive beside the default one (engine onnxruntime, precision fp32: the exact
vectors, and what ResNet18 ran before OpenVINO bf16 became its default): its (b), its
model stage (the 2.2x target's denominator), its (c), and the cosine of the default's
embeddings against its over the corpus. For (c) it also counts the CPU
seconds of the TorchServe worker, the Java frontend and the client, which share the cores.
ResNet18 timings use random weights (the published ones cannot be downloaded here;
speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import requests
import torch
import yaml

from devtools import REPO
from devtools.images import one_pixel, repo_photos
from devtools.machine import machine
from devtools.photos import camera_corpus, noisy_camera_corpus, phone_corpus, pixels
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
    engine = {"engine": pipeline.engine.name, "precision": pipeline.engine.precision, "best_batch": best}
    return rates, model_rate, engine


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


def fp32_config(work: Path) -> Path:
    """config/model-config.yaml with exact vectors asked for: ONNX Runtime fp32."""
    settings = yaml.safe_load((REPO / "config" / "model-config.yaml").read_text())
    settings["handler"].update(engine="onnxruntime", precision="fp32")
    path = work / "model-config-fp32.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def rank_command(server: TorchServe, model: str, folder: Path, store: Path, batch: int, concurrency: int) -> list[str]:
    """The README's `python client/rank.py` over ``folder`` against ``server``, ranked against its first photo."""
    return [sys.executable, str(REPO / "client" / "rank.py"), "--images_folder", str(folder),
            "--ref_image", sorted(folder.glob("*.jpg"))[0].name, "--url", server.url, "--model", model,
            "--store", str(store), "--quiet", "--token-file", str(server.key_file), "--batch-size", str(batch),
            "--concurrency", str(concurrency)]  # fmt: skip


def served(model_store: Path, model: str, files: list[Path], workdir: Path, batch: int, concurrency: int,
           phone: list[Path] | None = None, kills: int = 0, load_clients: int = 3) -> dict:  # fmt: skip
    """(c) and (d): the README's commands, timed whole, with peak RSS of workers and client; the time
    from serve.sh to ready; then the cold command on ``phone`` and ``kills`` worker restarts of each kind."""
    began = time.perf_counter()
    server = TorchServe.start(workdir, model_store, (model,))  # serve.sh, then until it answers an inference
    start_s = time.perf_counter() - began
    try:
        command = rank_command(server, model, files[0].parent, workdir / f"store-{model}.sqlite", batch, concurrency)
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
        run = {"start_s": start_s, "cold_s": cold, "warm_s": warm, "client_peak_rss": max(cold_rss, warm_rss),
               "worker_peak_rss": worker_peak, "cold_cpu": cpu}  # fmt: skip
        if phone:
            print("phone: cold rank.py ...", file=sys.stderr)
            command = rank_command(server, model, phone[0].parent, workdir / f"store-{model}-phone.sqlite", batch,
                                   concurrency)  # fmt: skip
            run["phone_cold_s"], run["phone_client_peak_rss"], result = wall(command, cwd=workdir)
            assert f"sent {len(phone)} to the server" in result.stderr, result.stderr
            run["phone_worker_peak_rss"] = max(peak_rss(pid) for pid in server.worker_pids())
        if kills:
            print(f"restart: {kills} x kill -9 with no load, {kills} x under load ...", file=sys.stderr)
            run["restart"] = restarts(server, model, kills, load_clients)
    finally:
        server.stop()
    return run


# --- worker restarts ----------------------------------------------------------------------------


def restarts(server: TorchServe, model: str, kills: int, load_clients: int) -> dict[str, list[float]]:
    """``kills`` restarts with no load, then ``kills`` under load: seconds until answered again, and the
    worker's own start (process started to model loaded) from TorchServe's log, per kill."""
    found: dict[str, list[float]] = {"idle_s": [], "loaded_s": [], "load_s": []}
    bodies = [p.read_bytes() for p in repo_photos()[:load_clients]]  # small real photos: a real decode each
    for clients, key in ((0, "idle_s"), (load_clients, "load_s")):
        for _ in range(kills):
            log_lines = len(server.log("ts_log.log").splitlines())
            found[key].append(answers_again_after_kill(server, model, bodies[:clients]))
            server.wait_until_serving(model)
            if clients == 0:
                loaded = worker_start_to_loaded(server.log("ts_log.log").splitlines()[log_lines:])
                if loaded is not None:
                    found["loaded_s"].append(loaded)
            time.sleep(1.0)  # the new worker settles before the next kill
    return found


def answers_again_after_kill(server: TorchServe, model: str, load: list[bytes], timeout: float = 300) -> float:
    """Seconds from ``kill -9`` of the model's workers until a request sent after the kill is answered 200.

    One client per body in ``load`` sends it over and over, from 2 s before the kill; a probe
    sends a 1-pixel image from the kill on. The first 200 of any of them counts.
    """
    url, headers = server.predict_url(model), server.headers()
    stop, killed, answered = threading.Event(), threading.Event(), []
    killed_at = [0.0]

    def client(body: bytes) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    ok = session.post(url, data=body, headers=headers, timeout=timeout).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok and killed.is_set() and sent >= killed_at[0]:
                    answered.append(time.monotonic())
                elif not ok:
                    time.sleep(0.05)  # the frontend refuses at once while no worker is up

    threads = [threading.Thread(target=client, args=(body,), daemon=True) for body in load]
    for thread in threads:
        thread.start()
    if load:
        time.sleep(2.0)
    victims = server.worker_pids()
    assert victims, "no model worker to kill"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at[0] = time.monotonic()
    killed.set()
    probe = threading.Thread(target=client, args=(one_pixel(),), daemon=True)
    probe.start()
    deadline = killed_at[0] + timeout
    while not answered and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in [*threads, probe]:
        thread.join(timeout)
    if not answered:
        raise RuntimeError(f"{model} answered nothing within {timeout:.0f} s of kill -9:\n{server.log()[-3000:]}")
    assert not set(server.worker_pids()) & set(victims), "the killed worker is still there"
    return min(answered) - killed_at[0]


def worker_start_to_loaded(ts_log: list[str]) -> float | None:
    """Seconds from the first worker process start in these ts_log.log lines to its model loaded, if both are there."""
    started = next((i for i, line in enumerate(ts_log) if "Worker cmdline:" in line), None)
    if started is None:
        return None
    loaded = next((line for line in ts_log[started:] if "-> WORKER_MODEL_LOADED" in line), None)
    if loaded is None:
        return None
    return (_log_time(loaded) - _log_time(ts_log[started])).total_seconds()


def _log_time(line: str) -> datetime:
    return datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S,%f")  # log4j's ISO8601 pattern


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


def corpus_line(name: str, files: list[Path]) -> str:
    """What a row was measured on: "6 noisy JPEGs of 2.1-5.8 MP, 0.74 MB on average"."""
    megapixels = [pixels(f) / 1e6 for f in files]
    megabytes = sum(f.stat().st_size for f in files) / len(files) / 1e6
    return f"{len(files)} {name} JPEGs of {min(megapixels):.1f}-{max(megapixels):.1f} MP, {megabytes:.2f} MB on average"


def seed_style(folder: Path, weights: Path | None) -> float | None:
    """(a) over every JPEG in ``folder``, img/s; None without ResNet18 weights (the seed ran ResNet18)."""
    return float(wall([sys.executable, "-c", SEED_BASELINE, str(folder), str(weights)])[2].stdout) if weights else None


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s" if values else "n/a"


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def startup_rows(run: dict, files: list[Path]) -> list[tuple[str, str, str]]:
    """The time from serve.sh to the ranked table, and the worker restarts, if measured."""
    rows = [("time from `./serve.sh` start to the ranked table", f"{run['start_s'] + run['cold_s']:.1f} s",
             f"serve.sh until an inference is answered {run['start_s']:.1f} s + cold rank.py {run['cold_s']:.1f} s "
             f"for {len(files)} images")]  # fmt: skip
    restart = run.get("restart")
    if restart:
        kills = len(restart["idle_s"])
        rows += [
            ("worker start to READY (ts_log.log: worker process started to model loaded)",
             _median(restart["loaded_s"]), f"median of {len(restart['loaded_s'])}: {_seconds(restart['loaded_s'])} s"
             if restart["loaded_s"] else "its lines were not found in logs/ts_log.log"),
            ("kill -9 of the worker, no load: until an inference is answered again", _median(restart["idle_s"]),
             f"median of {kills}: {_seconds(restart['idle_s'])} s; TorchServe's retry delay included"),
            (f"kill -9 of the worker under load ({run['load_clients']} clients): until a request is answered again",
             _median(restart["load_s"]), f"median of {kills}: {_seconds(restart['load_s'])} s"),
        ]  # fmt: skip
    return rows


def phone_rows(run: dict, phone: list[Path], a: float | None) -> list[tuple[str, str, str]]:
    if not phone:
        return []
    c = len(phone) / run["phone_cold_s"]
    return [
        ("phone (a) seed-style", f"{a:.1f} img/s" if a else "n/a", corpus_line("phone", phone)),
        ("phone (c) cold: `python client/rank.py`, empty store", f"{c:.1f} img/s",
         f"{run['phone_cold_s']:.1f} s for {len(phone)} images; peak RSS worker / client {run['phone_worker_peak_rss'] / 2**20:.0f} / "
         f"{run['phone_client_peak_rss'] / 2**20:.0f} MiB"),
    ]  # fmt: skip


def startup_ratios(run: dict, phone: list[Path], a_phone: float | None) -> list[tuple[str, str]]:
    restart = run.get("restart")
    ratios = []
    if restart:
        ratios += [
            ("worker start to READY, target <= 3 s", _median(restart["loaded_s"])),
            ("answers again after kill -9 under load, target <= 5 s", _median(restart["load_s"])),
        ]
    if phone:
        c = len(phone) / run["phone_cold_s"]
        ratios.append(("phone (c) / phone (a)", f"{c / a_phone:.2f}" if a_phone else "n/a"))
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", choices=sorted(GFLOP_PER_IMAGE))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--corpus", default="noisy", choices=["noisy", "plain"],
                        help="noisy: camera-like sensor noise, 0.6-0.9 MB a photo (default); plain: rescaled only")  # fmt: skip
    parser.add_argument("--phone-images", type=int, default=20, help="12 MP phone photos for the phone rows; 0 skips")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 of the worker per restart row; 0 skips them")
    parser.add_argument("--load-clients", type=int, default=3, help="clients sending during the kills under load")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--client-batch", type=int, default=32, help="rank.py's default")
    parser.add_argument("--concurrency", type=int, default=3, help="rank.py's default")
    parser.add_argument("--store-sizes", default="100000,1000000")
    parser.add_argument("--pg-size", type=int, default=100_000, help="0 skips pgvector")
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 archive's (b), (c) and cosine")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    print("making the corpus (cached in .imgsim/) ...", file=sys.stderr)
    files = noisy_camera_corpus(args.images) if args.corpus == "noisy" else camera_corpus(args.images)
    phone = phone_corpus(args.phone_images) if args.phone_images else []
    megapixels = [pixels(f) / 1e6 for f in files]
    print(f"corpus: {corpus_line(args.corpus, files)}", file=sys.stderr)
    if phone:
        print(f"phone: {corpus_line('phone', phone)}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-"))
    weights = None
    if args.arch == "resnet18":
        weights = random_resnet18_weights(work / "resnet18-random.pth")
    model_store = work / "model_store"
    model = archive(args.arch, model_store, weights)
    model_dir = work / "unpacked"
    zipfile.ZipFile(model_store / f"{model}.mar").extractall(model_dir)

    print("(a) seed-style baseline ...", file=sys.stderr)
    a = seed_style(files[0].parent, weights)
    a_phone = seed_style(phone[0].parent, weights) if phone else None
    print("(b) in-process ceiling ...", file=sys.stderr)
    rates, model_rate, engine = in_process(model_dir, files, [int(s) for s in args.batch_sizes.split(",")])
    b = max(rates.values())
    print("(c, d) TorchServe + rank.py ...", file=sys.stderr)
    run = served(model_store, model, files, work, args.client_batch, args.concurrency, phone, args.kills,
                 args.load_clients)  # fmt: skip
    run["load_clients"] = args.load_clients
    c, d = len(files) / run["cold_s"], len(files) / run["warm_s"]
    exact = None
    if not args.no_fp32:
        print("fp32 archive: (b), model stage, (c) and embedding cosine of the default vs fp32 ...", file=sys.stderr)
        exact_model = archive(args.arch, model_store, weights, fp32_config(work), f"{model}-fp32")
        exact_dir = work / "unpacked-fp32"
        zipfile.ZipFile(model_store / f"{exact_model}.mar").extractall(exact_dir)
        exact_rates, exact_model_rate, exact_engine = in_process(exact_dir, files, [engine["best_batch"]])
        exact_run = served(model_store, exact_model, files, work, args.client_batch, args.concurrency)
        exact = {"b": max(exact_rates.values()), "model": exact_model_rate, "c": len(files) / exact_run["cold_s"],
                 "run": exact_run, "engine": exact_engine, "cosine": cosines(exact_dir, model_dir, files)}  # fmt: skip
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
        *startup_rows(run, files),
        *phone_rows(run, phone, a_phone),
        *[(f"(e) top-10 query, {k.replace('_', ', ')} vectors", f"{v:.1f} ms", "median of 20, store open")
          for k, v in e.items()],
        *([] if exact is None else [
            (f"(b) fp32 archive ({exact['engine']['engine']} fp32) in process, batch {exact['engine']['best_batch']}",
             f"{exact['b']:.1f} img/s", ""),
            ("(b-model) fp32 archive's model stage alone", f"{exact['model']:.1f} img/s", ""),
            ("(c) fp32 archive, cold", f"{exact['c']:.1f} img/s", f"{exact['run']['cold_s']:.1f} s; CPU s "
             + _cpu_row(exact["run"]["cold_cpu"])),
            ("embedding cosine, default vs fp32 archive, over the corpus", f"min {exact['cosine'].min():.6f}",
             f"median {np.median(exact['cosine']):.6f}, {len(exact['cosine'])} photos"),
        ]),
        ("peak RSS: TorchServe worker / client", f"{run['worker_peak_rss'] / 2**20:.0f} MiB / "
         f"{run['client_peak_rss'] / 2**20:.0f} MiB", ""),
    ]  # fmt: skip
    ratios = [
        (f"(c) / (a) on the {args.corpus} corpus, target >= 4 on the noisy one", f"{c / a:.2f}" if a else "n/a"),
        ("(c) / (b), target >= 0.8", f"{c / b:.2f}"),

        ("(c) time / (d) time, target >= 5", f"{run['cold_s'] / run['warm_s']:.1f}"),
        *startup_ratios(run, phone, a_phone),
        *([] if exact is None else [
            (f"(b-model) default ({engine['engine']} {engine['precision']}) / onnxruntime fp32, target >= 2.2 "
             "for resnet18", f"{model_rate / exact['model']:.2f}"),
            ("fp32 archive: (c) / (a)", f"{exact['c'] / a:.2f}" if a else "n/a"),
            ("fp32 archive: (c) / (b)", f"{exact['c'] / exact['b']:.2f}"),
            ("embedding cosine default vs fp32: median (target >= 0.9999) / min (target >= 0.999)",
             f"{np.median(exact['cosine']):.6f} / {exact['cosine'].min():.6f}"),
        ]),
    ]  # fmt: skip
    table = "| measurement | result | detail |\n| --- | --- | --- |\n" + "".join(f"| {m} | {r} | {x} |\n" for m, r, x in rows)
    table += "\n| ratio | value |\n| --- | --- |\n" + "".join(f"| {m} | {v} |\n" for m, v in ratios)
    command = "python bench/throughput.py " + " ".join(sys.argv[1:])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    megabytes = sum(f.stat().st_size for f in files) / len(files) / 1e6
    section = (f"\n## {stamp}: {args.arch}, {len(files)} {args.corpus} photos of {min(megapixels):.1f}-"
               f"{max(megapixels):.1f} MP, {megabytes:.2f} MB on average\n\n"
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
