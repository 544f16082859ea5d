"""CPU seconds of TorchServe's Java frontend per way of sending a folder, and per JIT setting.

    .venv/bin/python bench/frontend_cpu.py      # ~3 minutes on 2 cores

On a 2-core machine the frontend shares the cores with the model, so its CPU is the
model's loss. For each JVM setting x body format a fresh TorchServe receives the
bench corpus (bench/throughput.py's 200 photos) twice, 32 photos per request and 3 in
flight as client/rank.py sends them: the first pass meets a cold JVM (a server's
first folder), the second a warm one. Prints a Markdown table: frontend CPU seconds
(and the C2 compiler threads' share), worker CPU seconds, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import psutil  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import throughput  # noqa: E402
from client.api import Upload, tar_body  # noqa: E402

JVM = {"JVM default (C1 + C2)": "", "C1 only (config.properties)": "-XX:TieredStopAtLevel=1"}


def multipart(files: list[Path]) -> dict:
    return {"files": [(f.name, (f.name, f.read_bytes(), "application/octet-stream")) for f in files]}


def tar(files: list[Path]) -> dict:
    """As client/rank.py sends a batch."""
    body = tar_body([Upload(f.name, f) for f in files])
    return {"data": body, "headers": {"Content-Type": "application/x-tar"}}


def thread_cpu(pid: int, prefix: str = "") -> float:
    """CPU seconds of a process's threads whose name starts with ``prefix`` (all threads: "")."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(prefix):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except OSError:
            pass
    return total


def one_server(model_store: Path, model: str, files: list[Path], vmargs: str, body, work: Path) -> list[dict]:
    env = throughput._env()
    env["TMPDIR"] = str(work)
    throughput.subprocess.run(
        [str(REPO / "serve.sh"), "--model-store", str(model_store), "--model", model, "--set", f"vmargs={vmargs}"],
        cwd=work, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    try:
        throughput._wait_serving(work, model)
        key = json.loads((work / "key_file.json").read_text())["inference"]["key"]
        server = [p for p in psutil.process_iter(["cmdline", "environ"]) if throughput._serves(p, work)]
        java = next(p for p in server if not throughput._is_worker(p, work))
        worker = next(p for p in server if throughput._is_worker(p, work))
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=3))
        url = f"http://127.0.0.1:8080/predictions/{model}"

        def send(chunk: list[Path]) -> None:
            response = session.post(url, timeout=300, **body(chunk))
            assert response.status_code == 200, response.text[:300]

        passes = []
        for _ in range(2):
            start = (thread_cpu(java.pid), thread_cpu(java.pid, "C2"), throughput._cpu(worker), time.perf_counter())
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(send, [files[i : i + 32] for i in range(0, len(files), 32)]))
            passes.append({
                "frontend": thread_cpu(java.pid) - start[0], "c2": thread_cpu(java.pid, "C2") - start[1],
                "worker": throughput._cpu(worker) - start[2], "wall": time.perf_counter() - start[3],
            })  # fmt: skip
        return passes
    finally:
        throughput.subprocess.run(["torchserve", "--stop"], cwd=work, env=env, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.parse_args()
    files = throughput.make_corpus(200)
    work = Path(tempfile.mkdtemp(prefix="imgsim-frontend-"))
    weights = work / "resnet18-random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = throughput.build_archive("resnet18", work / "model_store", weights)
    rows = []
    for jvm, vmargs in JVM.items():
        for name, body in (("multipart", multipart), ("tar", tar)):
            print(f"{jvm}, {name} ...", file=sys.stderr)
            for label, p in zip(("cold JVM", "warm JVM"), one_server(work / "model_store", model, files, vmargs, body, work)):
                rows.append(f"| {jvm} | {name} | {label} | {p['frontend']:.2f} ({p['c2']:.2f} in C2) | "
                            f"{p['worker']:.2f} | {p['wall']:.2f} |")  # fmt: skip
    throughput.shutil.rmtree(work, ignore_errors=True)
    print(f"{len(files)} photos, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB, 32 per request, 3 in flight; "
          f"{throughput.machine()}\n")  # fmt: skip
    print("| JVM | body | pass | frontend CPU s | worker CPU s | wall s |\n| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
