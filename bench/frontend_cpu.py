"""CPU seconds of TorchServe's Java frontend per way of sending a folder, and per JIT setting.

    .venv/bin/python bench/frontend_cpu.py      # ~3 minutes on 2 cores

On a 2-core machine the frontend shares the cores with the model, so its CPU is the
model's loss. For each JVM setting x body format a fresh TorchServe receives the
camera corpus (devtools.photos.camera_corpus: the 200 photos bench/throughput.py
sends) twice, 32 photos per request and 3 in flight as client/rank.py sends them: the
first pass meets a cold JVM (a server's first folder), the second a warm one. Prints a
Markdown table: frontend CPU seconds (and the C2 compiler threads' share), worker CPU
seconds, wall seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from client.torchserve_client import Upload, tar_body
from devtools.machine import machine
from devtools.photos import camera_corpus
from devtools.processes import cpu_seconds, thread_cpu_seconds, workers_of
from devtools.torchserve import TorchServe, build_archive
from devtools.weights import random_resnet18_weights

JVM = {"JVM default (C1 + C2)": "", "C1 only (config.properties)": "-XX:TieredStopAtLevel=1"}
MODEL = "resnet18-embed"


def multipart(files: list[Path]) -> dict:
    return {"files": [(f.name, (f.name, f.read_bytes(), "application/octet-stream")) for f in files]}


def tar(files: list[Path]) -> dict:
    """As client/rank.py sends a batch."""
    body = tar_body([Upload(f.name, f) for f in files])
    return {"data": body, "headers": {"Content-Type": "application/x-tar"}}


def one_server(model_store: Path, model: str, files: list[Path], vmargs: str, body, work: Path) -> list[dict]:
    server = TorchServe.start(work, model_store, (model,), settings={"vmargs": vmargs})
    try:
        java = psutil.Process(server.frontend_pid())
        worker = workers_of(java.pid)[0]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {server.key}"
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=3))
        url = server.predict_url(model)

        def send(chunk: list[Path]) -> None:
            response = session.post(url, timeout=300, **body(chunk))
            assert response.status_code == 200, response.text[:300]

        passes = []
        for _ in range(2):
            start = (thread_cpu_seconds(java.pid), thread_cpu_seconds(java.pid, "C2"), cpu_seconds(worker),
                     time.perf_counter())  # fmt: skip
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(send, [files[i : i + 32] for i in range(0, len(files), 32)]))
            passes.append({
                "frontend": thread_cpu_seconds(java.pid) - start[0],
                "c2": thread_cpu_seconds(java.pid, "C2") - start[1],
                "worker": cpu_seconds(worker) - start[2],
                "wall": time.perf_counter() - start[3],
            })  # fmt: skip
        return passes
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.parse_args()
    files = camera_corpus(200)
    work = Path(tempfile.mkdtemp(prefix="imgsim-frontend-"))
    weights = random_resnet18_weights(work / "resnet18-random.pth")
    build_archive(work / "model_store", "--arch", "resnet18", "--name", MODEL, "--weights", str(weights),
                  "--allow-unverified-weights")  # fmt: skip
    rows = []
    for jvm, vmargs in JVM.items():
        for name, body in (("multipart", multipart), ("tar", tar)):
            print(f"{jvm}, {name} ...", file=sys.stderr)
            passes = one_server(work / "model_store", MODEL, files, vmargs, body, work)
            for label, p in zip(("cold JVM", "warm JVM"), passes):
                rows.append(f"| {jvm} | {name} | {label} | {p['frontend']:.2f} ({p['c2']:.2f} in C2) | "
                            f"{p['worker']:.2f} | {p['wall']:.2f} |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} photos, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB, 32 per request, 3 in flight; "
          f"{machine().describe()}\n")  # fmt: skip
    print("| JVM | body | pass | frontend CPU s | worker CPU s | wall s |\n| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
