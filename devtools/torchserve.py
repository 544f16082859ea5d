"""Builds archives and runs real TorchServe through the repository's own build_mar.sh and serve.sh.

Every server started here listens on free loopback ports in a folder of its own
(``TMPDIR`` too, where TorchServe keeps its pid file), so several run side by side and
none takes the README's 127.0.0.1:8080. Ready means what ``python -m client.readiness`` says
(every model answers an image), never /ping; serve.sh waits for it, and ``start`` then holds
serve.sh to its word: the first request after it returns must be answered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from client.server_files import Keys, read_keys
from devtools import REPO, processes
from devtools.images import one_pixel
from devtools.ports import free_port


def tool_env() -> dict[str, str]:
    """PATH with this interpreter's bin first, so the scripts find the same torchserve and Python."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    return env


def server_env(workdir: Path) -> dict[str, str]:
    """``tool_env()`` with TMPDIR in ``workdir``: TorchServe keeps its pid file there, so servers stay apart."""
    return {**tool_env(), "TMPDIR": str(workdir)}


def build_archive(out: Path, *args: str) -> Path:
    """Runs ``build_mar.sh --out out ARGS`` (``--arch``, ``--name``, ``--weights``, ...); returns ``out``."""
    result = subprocess.run(
        [str(REPO / "build_mar.sh"), "--out", str(out), *args],
        env=tool_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"build_mar.sh {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return out


@dataclass(frozen=True)
class Ports:
    """A TorchServe's five ports, all on loopback."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


def serve_command(
    model_store: Path, models: tuple[str, ...], ports: Ports, settings: dict[str, str] | None = None
) -> list[str]:
    """serve.sh with ``models`` from ``model_store`` on ``ports``; ``settings``: more config.properties entries."""
    command = [str(REPO / "serve.sh"), "--model-store", str(model_store)]
    for model in models:
        command += ["--model", model]
    for flag, port in (("--inference-address", ports.inference), ("--management-address", ports.management),
                       ("--metrics-address", ports.metrics)):  # fmt: skip
        command += [flag, ports.url(port)]
    command += ["--set", f"grpc_inference_port={ports.grpc_inference}"]
    command += ["--set", f"grpc_management_port={ports.grpc_management}"]
    for key, value in (settings or {}).items():
        command += ["--set", f"{key}={value}"]
    return command


@dataclass
class TorchServe:
    workdir: Path
    url: str
    management_url: str
    metrics_url: str
    models: tuple[str, ...]
    env: dict[str, str]

    @classmethod
    def start(
        cls, workdir: Path, model_store: Path, models: tuple[str, ...], settings: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> TorchServe:  # fmt: skip
        """serve.sh on free ports from ``workdir`` (it returns once every model answers an inference).

        ``settings``: more config.properties entries (``--set key=value``), e.g. ``vmargs``.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        ports = Ports.free()
        env = server_env(workdir)
        command = serve_command(model_store, models, ports, settings) + ["--wait", str(int(timeout))]
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout + 60)
        server = cls.at(workdir, ports, models, env)
        if result.returncode != 0:
            raise RuntimeError(
                f"serve.sh failed ({result.returncode}):\n{result.stderr}{server.log('torchserve.out')[-3000:]}"
            )
        try:
            for model in models:
                server.answers_now(model)
        except BaseException:
            server.stop()  # a server that never became ready must not outlive its caller
            raise
        return server

    @classmethod
    def at(cls, workdir: Path, ports: Ports, models: tuple[str, ...], env: dict[str, str]) -> TorchServe:
        """The server serve.sh runs (or will run) from ``workdir`` on ``ports``."""
        return cls(workdir, ports.url(ports.inference), ports.url(ports.management), ports.url(ports.metrics),
                   models, env)  # fmt: skip

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def keys(self) -> Keys:
        return read_keys(self.key_file)

    @property
    def key(self) -> str:
        """The inference key."""
        return self.keys.inference

    @property
    def management_key(self) -> str:
        return self.keys.management

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

    def frontend_pid(self) -> int:
        """The Java frontend's process id."""
        return processes.frontend_pid(self.workdir)

    def worker_pids(self) -> list[int]:
        """The Python model workers' process ids, lowest first."""
        return processes.worker_pids(self.workdir)

    def answers_now(self, model: str) -> None:
        """One image, no retry: raises unless ``model`` answers it 200 (what "ready" promised)."""
        r = requests.post(self.predict_url(model), data=one_pixel(), headers=self.headers(), timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"serve.sh said ready, but {model} answered {r.status_code}: {r.text[:300]}")

    def ready(self, *models: str, timeout: float = 10.0) -> bool:
        """The readiness check, run as a container's exec probe would run it: exit status 0."""
        result = self.readiness(*models, timeout=timeout)
        return result.returncode == 0

    def readiness(self, *models: str, wait: float = 0, timeout: float = 10.0) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "client.readiness", "--dir", str(self.workdir), "--wait", str(wait),
                   "--timeout", str(timeout), *(arg for model in models for arg in ("--model", model))]  # fmt: skip
        env = {**self.env, "PYTHONPATH": str(REPO)}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=wait + 6 * timeout + 60)

    def wait_until_serving(self, model: str, timeout: float = 300) -> None:
        """Until the readiness check passes for ``model`` (after a worker restart, say)."""
        result = self.readiness(model, wait=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{model} not ready within {timeout:.0f} s:\n{result.stderr[-2000:]}\n{self.log()[-3000:]}"
            )

    def stop(self) -> None:
        subprocess.run(["torchserve", "--stop"], cwd=self.workdir, env=self.env, capture_output=True, timeout=120)
