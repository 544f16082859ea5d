"""Several replicas behind one address with one key, on loopback with real processes (deploy/local/).

Two TorchServe replicas, each behind its nginx edge that checks the shared key and forwards with
that replica's own TorchServe key, and nginx in front as the load balancer (a Kubernetes
Service), started and stopped by deploy/local/topology.py as a user runs it.
About 2-3 minutes on 2 cores: `pytest tests/integration/test_scale_out.py`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import requests
from PIL import Image, ImageOps

from devtools import REPO
from devtools.images import one_pixel, repo_photos
from tests.conftest import LITE, stored_count
from tests.support.cli import json_frame, run_client
from tests.support.waiting import listening, wait_for

TOPOLOGY = REPO / "deploy" / "local" / "topology.py"
FOLDER_SIZE = 200
REFERENCE = "000_astronaut.jpg"
RANKING = ["rank", "file", "score", "label", "sha256"]


@dataclass
class Topology:
    run: Path

    @property
    def state(self) -> dict:
        return json.loads((self.run / "state.json").read_text())

    @property
    def url(self) -> str:
        return self.state["url"]

    @property
    def key_file(self) -> Path:
        return self.run / "shared.key"

    @property
    def key(self) -> str:
        return self.key_file.read_text().strip()

    def replica(self, index: int) -> dict:
        return next(r for r in self.state["replicas"] if r["index"] == index)

    def replica_dir(self, index: int) -> Path:
        return self.run / "replicas" / str(index)

    def edge_predictions(self, index: int) -> int:
        """Requests the balancer passed to this replica's edge (its nginx access log)."""
        log = self.replica_dir(index) / "edge" / "nginx" / "logs" / "access.log"
        return sum("/predictions/" in line for line in log.read_text().splitlines()) if log.exists() else 0

    def rank(self, folder: Path, *args: str, key_file: Path | None = None) -> list[str]:
        return [sys.executable, str(REPO / "client" / "rank.py"), "--url", self.url, "--model", LITE,
                "--token-file", str(key_file or self.key_file), "--quiet", *rank_args(folder, *args)]  # fmt: skip


def topology(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOPOLOGY), *args], capture_output=True, text=True, timeout=timeout)


def start_topology(run: Path, model_store: Path, replicas: int = 2) -> Topology:
    result = topology("up", "--run-dir", str(run), "--model", LITE, "--model-store", str(model_store),
                      "--replicas", str(replicas))  # fmt: skip
    if result.returncode != 0:
        topology("down", "--run-dir", str(run))
        raise AssertionError(f"topology.py up failed:\n{result.stderr}")
    return Topology(run)


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory, model_store):
    cluster = start_topology(tmp_path_factory.mktemp("topology"), model_store)
    yield cluster
    topology("down", "--run-dir", str(cluster.run))


def small_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` small JPEGs, each a different random crop of a real photo of images/."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, photos = random.Random(seed), repo_photos()
    for i in range(count):
        source = photos[i % len(photos)]
        with Image.open(source) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
        w, h = image.size
        share = rng.uniform(0.5, 0.95)
        cw, ch = int(w * share), int(h * share)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        crop.thumbnail((192, 192))
        crop.save(folder / f"{i:03d}_{source.stem}.jpg", quality=85)
    return folder


def rank_args(folder: Path, *args: str) -> tuple[str, ...]:
    return ("--images_folder", str(folder), "--ref_image", REFERENCE, "--format", "json", *args)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return small_photos(tmp_path_factory.mktemp("photos"), FOLDER_SIZE)


@pytest.fixture(scope="module")
def one_server_ranking(server, photos) -> pd.DataFrame:
    """The ranking of ``photos`` by one plain TorchServe (the session's)."""
    return json_frame(run_client("rank", *rank_args(photos, "--no-store"), server=server))


def assert_same_ranking(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Every photo has the same score (within 1e-5) and place; two photos may trade places only on a tie."""
    assert len(got) == len(expected) == FOLDER_SIZE - 1  # the reference is left out
    scores = [frame.set_index("file")["score"].sort_index() for frame in (got, expected)]
    pd.testing.assert_series_equal(*scores, check_exact=False, atol=1e-5)
    for (_, a), (_, b) in zip(got[RANKING].iterrows(), expected[RANKING].iterrows()):
        assert a["rank"] == b["rank"]
        assert a["file"] == b["file"] or abs(a["score"] - b["score"]) <= 1e-5, (a.to_dict(), b.to_dict())


def group_members(pgid: int) -> list[str]:
    """The live processes of a process group, by name."""
    members = []
    for process in psutil.process_iter(["name", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.info["name"])
        except (OSError, psutil.Error):
            pass
    return members


def post(url: str, key: str | None) -> requests.Response:
    headers = {"Content-Type": "image/png"} | ({"Authorization": f"Bearer {key}"} if key is not None else {})
    return requests.post(f"{url}/predictions/{LITE}", data=one_pixel(), headers=headers, timeout=60)


# --- one key ----------------------------------------------------------------------------------------


def test_only_the_shared_key_passes_the_balancer_and_each_replica_keeps_its_own_key(two_replicas):
    own_key = json.loads((two_replicas.replica_dir(1) / "torchserve" / "key_file.json").read_text())["inference"]["key"]
    refused = {
        "no key": post(two_replicas.url, None),
        "a wrong key": post(two_replicas.url, "x" * 43),
        "a replica's own TorchServe key": post(two_replicas.url, own_key),
        "the shared key in other letter case": post(two_replicas.url, two_replicas.key.swapcase()),
    }
    for what, response in refused.items():
        assert response.status_code == 401, (what, response.status_code, response.text)
        assert response.headers["Content-Type"] == "application/json", what
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), what
        assert response.json()["code"] == 401 and "shared key" in response.json()["message"], what
    accepted = post(two_replicas.url, two_replicas.key)
    assert accepted.status_code == 200 and accepted.json()["embedding"], accepted.text
    # TorchServe's own token auth stays on behind the edge: the shared key does not open it
    direct = post(f"http://127.0.0.1:{two_replicas.replica(1)['ports']['inference']}", two_replicas.key)
    assert direct.status_code == 400 and "InvalidKeyException" in direct.text


def test_only_predictions_pass_the_edge(two_replicas):
    auth = {"Authorization": f"Bearer {two_replicas.key}"}
    for path in ("/ping", "/models", f"/models/{LITE}", "/metrics", "/api-description"):
        response = requests.get(two_replicas.url + path, headers=auth, timeout=30)
        assert response.status_code == 404 and response.json()["type"] == "NotFound", (path, response.text)


def test_a_body_over_the_size_limit_gets_413_before_the_key_is_checked(two_replicas):
    big = b"\0" * (64 * 2**20 + 1)  # one byte over max_request_size
    for key in (None, two_replicas.key):
        headers = {"Content-Type": "application/x-tar"} | ({"Authorization": f"Bearer {key}"} if key else {})
        response = requests.post(f"{two_replicas.url}/predictions/{LITE}", data=big, headers=headers, timeout=60)
        assert response.status_code == 413 and "error" not in response.json()  # the client halves its batch on it


def test_the_client_names_the_key_the_edge_refused_and_never_prints_it(two_replicas, photos, tmp_path):
    replica_keys = two_replicas.replica_dir(1) / "torchserve" / "key_file.json"
    result = subprocess.run(two_replicas.rank(photos, "--no-store", key_file=replica_keys),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"refused the key (from {replica_keys}) with 401" in result.stderr and "shared key" in result.stderr
    own_key = json.loads(replica_keys.read_text())["inference"]["key"]
    assert own_key not in result.stderr + result.stdout and "Traceback" not in result.stderr

    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-shared-key-but-long-enough-to-look-like-one\n")
    result = subprocess.run(two_replicas.rank(photos, "--no-store", key_file=wrong),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and f"refused the key (from {wrong}) with 401" in result.stderr
    assert "not-the-shared-key" not in result.stderr + result.stdout


# --- the same ranking -----------------------------------------------------------------------------


def test_a_ranking_through_the_balancer_equals_one_servers(two_replicas, photos, one_server_ranking):
    before = {i: two_replicas.edge_predictions(i) for i in (1, 2)}
    result = subprocess.run(two_replicas.rank(photos, "--no-store", "--batch-size", "4"),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_same_ranking(json_frame(result.stdout), one_server_ranking)
    served = {i: two_replicas.edge_predictions(i) - before[i] for i in (1, 2)}
    assert sum(served.values()) >= FOLDER_SIZE // 4 and min(served.values()) > 0, served  # both replicas worked


# --- readiness --------------------------------------------------------------------------------------


def tampered_store(model_store: Path, folder: Path) -> Path:
    """The LITE archive with one byte of its exported model flipped: its worker refuses to load it (the
    archive's sha256 check) and TorchServe keeps restarting it, so the replica never becomes ready."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(model_store / f"{LITE}.mar") as original, \
            zipfile.ZipFile(folder / f"{LITE}.mar", "w", zipfile.ZIP_STORED) as tampered:  # fmt: skip
        for member in original.infolist():
            data = original.read(member)
            if member.filename.endswith(".onnx"):
                data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]
            tampered.writestr(member.filename, data)
    return folder


def test_a_replica_that_is_not_ready_gets_no_traffic(two_replicas, model_store, tmp_path):
    added = topology("add", "--run-dir", str(two_replicas.run), "--model-store",
                     str(tampered_store(model_store, tmp_path / "store")), "--wait", "0")  # fmt: skip
    assert added.returncode == 0, added.stderr
    index = max(int(folder.name) for folder in (two_replicas.run / "replicas").iterdir())
    try:
        # it runs: TorchServe up, its edge listening with the key handed over, its worker failing to load
        wait_for(lambda: any(r["index"] == index for r in two_replicas.state["replicas"]), 60, "the first probe")
        wait_for(lambda: listening(two_replicas.replica(index)["edge_port"]), 120, "the third edge to listen")
        wait_for(lambda: "workers READY" in two_replicas.replica(index)["reason"], 120, "its worker to be described")
        assert not two_replicas.replica(index)["ready"] and not two_replicas.replica(index)["in_balancer"]

        answers = [post(two_replicas.url, two_replicas.key).status_code for _ in range(30)]
        assert answers == [200] * 30
        assert two_replicas.edge_predictions(index) == 0  # not one request reached it
        assert not two_replicas.replica(index)["in_balancer"], two_replicas.replica(index)
        model_log = two_replicas.replica_dir(index) / "torchserve" / "logs" / "model_log.log"
        wait_for(lambda: "ArchiveError" in model_log.read_text(), 60, "the worker's reason in its log")
    finally:
        removed = topology("remove", "--run-dir", str(two_replicas.run), "--replica", str(index))
        assert removed.returncode == 0, removed.stderr
    assert {r["index"] for r in two_replicas.state["replicas"] if r["in_balancer"]} == {1, 2}


# --- a whole replica killed ---------------------------------------------------------------------------


def test_kill_9_of_a_whole_replica_midway_and_the_run_completes_with_the_same_ranking(
    model_store, photos, one_server_ranking, tmp_path
):
    cluster = start_topology(tmp_path / "topology", model_store)
    try:
        store = tmp_path / "store.sqlite"
        process = subprocess.Popen(cluster.rank(photos, "--store", str(store), "--batch-size", "4",
                                                "--concurrency", "2"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(lambda: stored_count(store) >= 40 or process.poll() is not None, 300, "40 stored images")
        assert process.poll() is None, "the run finished before a replica could be killed"
        assert cluster.edge_predictions(1) > 0  # replica 1 was serving this run
        victim = cluster.replica(1)
        groups = (victim["torchserve_pid"], victim["edge_pid"])
        torchserve, edge = group_members(groups[0]), group_members(groups[1])
        assert "java" in torchserve and len(torchserve) >= 3 and edge.count("nginx") >= 2, (torchserve, edge)
        for group in groups:  # TorchServe: its launcher, Java frontend and model worker; the edge: sh and nginx
            os.killpg(group, signal.SIGKILL)
        wait_for(lambda: not any(group_members(g) for g in groups), 30, "every process of replica 1 to end")
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert f"sent {FOLDER_SIZE} to the server" in err
        assert_same_ranking(json_frame(out), one_server_ranking)
        # the supervisor saw it fail its readiness check and took it out of the balancer
        wait_for(lambda: not cluster.replica(1)["in_balancer"], 30, "replica 1 to leave the balancer")
        assert cluster.replica(2)["in_balancer"]
        assert post(cluster.url, cluster.key).status_code == 200
    finally:
        topology("down", "--run-dir", str(cluster.run))
