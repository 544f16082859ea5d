"""The edge's metrics listener (deploy/edge/metrics.conf.template) in front of a real TorchServe:
Prometheus gets GET /metrics on its own port, and nothing on that port reaches inference."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devtools import IMAGES, REPO
from devtools.ports import free_port
from devtools.torchserve import TorchServe
from tests.conftest import LITE
from tests.support.waiting import listening

START_EDGE = REPO / "deploy" / "edge" / "start-edge.sh"


@dataclass
class Edge:
    url: str
    metrics_url: str
    shared_key: str


def start_edge(server: TorchServe, folder: Path, metrics_port: int | None) -> tuple[subprocess.Popen, Edge]:
    """start-edge.sh in front of ``server``, once its listeners are up; with a metrics listener if given a port."""
    folder.mkdir(parents=True, exist_ok=True)
    shared = secrets.token_urlsafe(32)
    (folder / "shared.key").write_text(shared + "\n")
    (folder / "inference.key").write_text(server.key)
    port = free_port()
    env = {
        **os.environ,
        "IMGSIM_SHARED_KEY_FILE": str(folder / "shared.key"),
        "IMGSIM_BACKEND_KEY_FILE": str(folder / "inference.key"),
        "IMGSIM_TORCHSERVE": server.url.removeprefix("http://"),
        "IMGSIM_TORCHSERVE_METRICS": server.metrics_url.removeprefix("http://"),
        "IMGSIM_EDGE_LISTEN": f"127.0.0.1:{port}",
        "IMGSIM_EDGE_PREFIX": str(folder / "nginx"),
        "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
    }
    env.pop("IMGSIM_EDGE_METRICS_LISTEN", None)
    if metrics_port:
        env["IMGSIM_EDGE_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
    with open(folder / "edge.out", "wb") as out:
        process = subprocess.Popen([str(START_EDGE)], env=env, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (listening(port) and (metrics_port is None or listening(metrics_port))):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise AssertionError((folder / "edge.out").read_text())
        time.sleep(0.2)
    return process, Edge(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", shared)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def edge(server: TorchServe, tmp_path_factory) -> Iterator[Edge]:
    process, started = start_edge(server, tmp_path_factory.mktemp("edge"), free_port())
    try:
        yield started
    finally:
        stop(process)


def served(text: str) -> float:
    """The ImagesServed count of model LITE in Prometheus text (0 before its first image)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ImagesServed{") and f'ModelName="{LITE}"' in line)  # fmt: skip


def test_prometheus_reads_torchserves_metrics_through_the_edge_without_a_key(edge: Edge) -> None:
    before = requests.get(f"{edge.metrics_url}/metrics", timeout=30)
    assert before.status_code == 200 and "# TYPE" in before.text
    photo = (IMAGES / "cat.png").read_bytes()
    answer = requests.post(f"{edge.url}/predictions/{LITE}", data=photo, timeout=120,
                           headers={"Authorization": f"Bearer {edge.shared_key}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    after = requests.get(f"{edge.metrics_url}/metrics", timeout=30)
    assert served(after.text) == served(before.text) + 1


def test_the_metrics_port_serves_nothing_but_get_metrics(edge: Edge) -> None:
    key = {"Authorization": f"Bearer {edge.shared_key}"}
    photo = (IMAGES / "cat.png").read_bytes()
    assert requests.post(f"{edge.metrics_url}/metrics", data=b"x", timeout=30).status_code == 403
    inference = requests.post(f"{edge.metrics_url}/predictions/{LITE}", data=b"tiny", headers=key, timeout=30)
    assert inference.status_code == 404 and "only GET /metrics" in inference.json()["message"]
    # a photo is refused before it is even read (the port takes no bodies), never answered
    assert requests.post(f"{edge.metrics_url}/predictions/{LITE}", data=photo, headers=key, timeout=30).status_code == 413
    assert requests.get(f"{edge.metrics_url}/ping", timeout=30).status_code == 404
    assert requests.get(f"{edge.url}/metrics", headers=key, timeout=30).status_code == 404  # not on inference's port


def test_without_the_setting_the_edge_opens_no_metrics_listener(server: TorchServe, tmp_path: Path) -> None:
    process, started = start_edge(server, tmp_path / "edge", None)
    try:
        rendered = (tmp_path / "edge" / "nginx" / "conf" / "metrics.conf").read_text()
        directives = [line for line in rendered.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert directives == [], rendered  # a comment alone: no server block, no listener
        key = {"Authorization": f"Bearer {started.shared_key}"}
        assert requests.get(f"{started.url}/metrics", headers=key, timeout=30).status_code == 404
    finally:
        stop(process)
