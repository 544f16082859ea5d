"""Builds archives and runs real TorchServe through the repo's own build_mar.sh and serve.sh."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env() -> dict[str, str]:
    """PATH with this interpreter's bin first, so serve.sh finds the same torchserve."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    return env


def build_archive(out: Path, *args: str) -> Path:
    result = subprocess.run(
        [str(REPO / "build_mar.sh"), "--out", str(out), *args],
        env=tool_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class TorchServe:
    workdir: Path
    url: str
    management_url: str
    metrics_url: str
    models: tuple[str, ...]
    env: dict[str, str]

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def key(self) -> str:
        return json.loads(self.key_file.read_text())["inference"]["key"]

    @property
    def management_key(self) -> str:
        return json.loads(self.key_file.read_text())["management"]["key"]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def predict_url(self, model: str) -> str:
        return f"{self.url}/predictions/{model}"

    def log(self, name: str = "model_log.log") -> str:
        path = self.workdir / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def prediction_requests(self, model: str) -> int:
        """How many prediction requests the server logged for ``model`` (its access log)."""
        return sum(f"/predictions/{model} " in line for line in self.log("access_log.log").splitlines())

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", "ts/model_service_worker.py"], capture_output=True, text=True).stdout
        mine = []
        for pid in map(int, out.split()):
            try:
                if Path(f"/proc/{pid}/environ").read_bytes().find(f"TMPDIR={self.workdir}".encode()) >= 0:
                    mine.append(pid)
            except OSError:
                pass
        return mine

    @classmethod
    def start(cls, workdir: Path, model_store: Path, models: tuple[str, ...]) -> "TorchServe":
        workdir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(5)]
        env = tool_env()
        env["TMPDIR"] = str(workdir)  # TorchServe keeps its pid file there: servers stay apart
        command = [str(REPO / "serve.sh"), "--model-store", str(model_store)]
        for model in models:
            command += ["--model", model]
        for flag, port in zip(("--inference-address", "--management-address", "--metrics-address"), ports):
            command += [flag, f"http://127.0.0.1:{port}"]
        command += ["--set", f"grpc_inference_port={ports[3]}", "--set", f"grpc_management_port={ports[4]}"]
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=200)
        server = cls(workdir, *(f"http://127.0.0.1:{p}" for p in ports[:3]), models, env)
        assert result.returncode == 0, result.stderr + server.log("torchserve.out")[-3000:]
        for model in models:
            server.wait_until_serving(model)
        return server

    def wait_until_serving(self, model: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = requests.post(self.predict_url(model), data=tiny_png(), headers=self.headers(), timeout=30)
                if r.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{model} never answered 200:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        subprocess.run(["torchserve", "--stop"], cwd=self.workdir, env=self.env, capture_output=True, timeout=120)
