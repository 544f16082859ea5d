"""Who can reach what: keys on every API, loopback-only sockets, no path a request can name,
and a client that never shows the key."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from client.server_files import SERVING_CONFIG
from client.server_files import read_properties as properties
from devtools import IMAGES, REPO
from devtools.images import tar_of
from devtools.ports import free_port
from tests.conftest import LITE
from tests.support.cli import run_client

CONFIG = REPO / "config" / "config.properties"
INVALID_KEY = "InvalidKeyException"


def effective(server) -> dict[str, str]:
    """What serve.sh handed TorchServe: the copy it keeps, never the repository's default."""
    copy = server.workdir / SERVING_CONFIG
    assert copy.is_file(), f"serve.sh left no {SERVING_CONFIG}"
    return properties(copy)


# --- keys ----------------------------------------------------------------------------------------


def management_calls(server) -> list[tuple[str, str]]:
    base = server.management_url
    return [
        ("GET", f"{base}/models"),
        ("GET", f"{base}/models/{LITE}"),
        ("PUT", f"{base}/models/{LITE}?min_worker=0&max_worker=0"),  # would stop the model's workers
        ("DELETE", f"{base}/models/{LITE}"),
        ("POST", f"{base}/models?url=/etc/passwd"),
        ("POST", f"{base}/token?type=inference"),  # would rotate the inference key
    ]


@pytest.mark.parametrize("key", ["none", "wrong", "the inference key"])
def test_management_calls_without_the_management_key_are_refused(server, key):
    headers = {"none": {}, "wrong": {"Authorization": "Bearer wrong"}}.get(key, server.headers())
    for method, url in management_calls(server):
        response = requests.request(method, url, headers=headers, timeout=30)
        assert response.status_code == 400 and INVALID_KEY in response.text, (method, url, response.text)
    # nothing changed: the model is still registered, with its worker, and the key still works
    described = requests.get(
        f"{server.management_url}/models/{LITE}", headers={"Authorization": f"Bearer {server.management_key}"}, timeout=30
    )
    assert described.status_code == 200 and described.json()[0]["minWorkers"] >= 1
    assert requests.post(server.predict_url(LITE), data=(IMAGES / "cat.png").read_bytes(), headers=server.headers(),
                         timeout=60).status_code == 200  # fmt: skip


def test_the_management_key_does_not_open_inference(server):
    for method, url in [("POST", server.predict_url(LITE)), ("GET", f"{server.url}/ping")]:
        response = requests.request(
            method, url, data=(IMAGES / "cat.png").read_bytes(),
            headers={"Authorization": f"Bearer {server.management_key}"}, timeout=30,
        )  # fmt: skip
        assert response.status_code == 400 and INVALID_KEY in response.text


def test_metrics_answer_prometheus_text(server):
    requests.post(server.predict_url(LITE), data=(IMAGES / "cat.png").read_bytes(), headers=server.headers(), timeout=60)
    response = requests.get(f"{server.metrics_url}/metrics", timeout=30)  # no key: metrics are loopback-only instead
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? [-+0-9.eE]+$')
    lines = [line for line in response.text.splitlines() if line]
    assert lines and all(line.startswith("# ") or sample.match(line) for line in lines), lines
    assert re.search(rf'^ts_inference_requests_total\{{model_name="{LITE}".*\}} [1-9]', response.text, re.M)


def test_without_a_key_only_metrics_and_the_api_description_answer(server):
    """What TorchServe 0.12 serves to anyone who can reach its loopback ports."""
    for method, url in [("OPTIONS", f"{server.url}/"), ("OPTIONS", f"{server.management_url}/"),
                        ("GET", f"{server.management_url}/api-description")]:  # fmt: skip
        response = requests.request(method, url, timeout=30)
        assert response.status_code == 200 and "openapi" in response.json()
        assert LITE not in response.text and server.key not in response.text and server.management_key not in response.text
    for url in [f"{server.url}/ping", f"{server.url}/models", f"{server.management_url}/models"]:
        assert requests.get(url, timeout=30).status_code == 400


# --- sockets -------------------------------------------------------------------------------------


def test_the_default_config_binds_every_endpoint_to_loopback_with_keys_on():
    config = properties(CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(config[key]).hostname == "127.0.0.1", key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert config[key] == "127.0.0.1", key
    assert config["disable_token_authorization"] == "false"
    assert config["enable_model_api"] == "false"
    assert config["enable_envvars_config"] == "false"  # an environment variable cannot turn the keys off


def test_the_running_server_changes_only_ports_of_the_default_config(server):
    default, running = properties(CONFIG), effective(server)
    assert running.keys() == default.keys()
    for key, value in default.items():
        if key.endswith("_port"):
            continue
        if key.endswith("_address") and value.startswith("http"):
            assert urlsplit(running[key]).hostname == urlsplit(value).hostname, key
        elif key == "metrics_config":  # made absolute, since TorchServe runs in another folder
            assert Path(running[key]) == REPO / value, key
        else:
            assert running[key] == value, key


def test_every_listening_socket_of_the_server_is_loopback(server):
    java = psutil.Process(server.frontend_pid())
    listening = [c.laddr for c in java.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = {a.port for a in listening}
    running = effective(server)
    expected = {urlsplit(getattr(server, attr)).port for attr in ("url", "management_url", "metrics_url")}
    expected |= {int(running["grpc_inference_port"]), int(running["grpc_management_port"])}
    assert expected <= ports, (expected, listening)
    for address in listening:
        ip = ipaddress.ip_address(address.ip)
        ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
        assert ip.is_loopback, f"TorchServe listens on {address.ip}:{address.port}"
    for worker in server.worker_pids():  # workers talk to the frontend over a Unix socket only
        assert not [c for c in psutil.Process(worker).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_no_endpoint_answers_on_another_interface(server):
    others = [
        a.address for addrs in psutil.net_if_addrs().values() for a in addrs
        if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
    ]  # fmt: skip
    if not others:
        pytest.skip("this machine has no interface but loopback")
    running = effective(server)
    ports = [urlsplit(getattr(server, attr)).port for attr in ("url", "management_url", "metrics_url")]
    ports += [int(running["grpc_inference_port"]), int(running["grpc_management_port"])]
    for address in others:
        for port in ports:
            with socket.socket() as probe:
                probe.settimeout(5)
                assert probe.connect_ex((address, port)) != 0, f"{address}:{port} accepts connections"


# --- paths ---------------------------------------------------------------------------------------

PATH_NAMES = [
    "../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "file:///etc/passwd", "~/.ssh/id_rsa",
    "key_file.json", "../key_file.json", "logs/../../x", "%2e%2e%2fetc%2fpasswd", "a/b/c.jpg", ".",
]  # fmt: skip


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folders`` with its size and mtime (TorchServe's own logs excepted: they grow)."""
    files = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and "logs" not in path.relative_to(folder).parts:
                stat = path.stat()
                files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture
def sentinel(tmp_path) -> Path:
    path = tmp_path / "sentinel.txt"
    path.write_text(f"imgsim-sentinel-{uuid.uuid4()}")
    return path


def test_names_that_look_like_paths_are_echoed_and_never_opened(server, model_store, sentinel):
    model_dir = Path(os.readlink(f"/proc/{server.worker_pids()[0]}/cwd"))  # where TorchServe unpacked the archive
    before = snapshot(server.workdir, model_store, model_dir)
    cat = (IMAGES / "cat.png").read_bytes()
    names = PATH_NAMES + [str(sentinel), f"file://{sentinel}"]
    forbidden = [sentinel.read_text(), "root:x:0:", server.key, server.management_key]

    multipart = requests.post(
        server.predict_url(LITE), files=[(n, (n, cat)) for n in names], headers=server.headers(), timeout=120
    )
    encoded = base64.b64encode(cat).decode()
    as_json = requests.post(
        server.predict_url(LITE), json={"images": [{"name": n, "data": encoded} for n in names]},
        headers=server.headers(), timeout=120,
    )  # fmt: skip
    as_tar = requests.post(server.predict_url(LITE), data=tar_of({n: cat for n in names}), headers=server.headers(),
                           timeout=120)  # fmt: skip
    # TorchServe's multipart decoder turns ":;=," into spaces ("file:///x" -> "file ///x"); JSON and tar keep names
    for response, echoed in ((multipart, [re.sub(r"[:;=,]", " ", n) for n in names]), (as_json, names), (as_tar, names)):
        assert response.status_code == 200, response.text[:300]
        items = response.json()
        assert [item["file"] for item in items] == echoed  # the name is a label, echoed
        assert all(len(item["embedding"]) == 1280 for item in items)  # the image is the bytes, not the name
        assert not any(secret in response.text for secret in forbidden)

    # a body (or base64 data) that is a path is bytes like any other: not an image
    for body in (str(sentinel).encode(), f"file://{sentinel}".encode(), b"/etc/passwd"):
        raw = requests.post(server.predict_url(LITE), data=body, headers=server.headers(), timeout=60)
        assert raw.status_code == 415 and raw.json()["error"]["code"] == "unsupported_format"
        assert not any(secret in raw.text for secret in forbidden)
    data_path = requests.post(
        server.predict_url(LITE), json={"images": [base64.b64encode(str(sentinel).encode()).decode()]},
        headers=server.headers(), timeout=60,
    )  # fmt: skip
    assert data_path.json()[0]["error"]["code"] == "unsupported_format"
    assert snapshot(server.workdir, model_store, model_dir) == before  # nothing written, nothing replaced


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/..%2F..%2F..%2Fetc%2Fpasswd", "/predictions/../../../etc/passwd",
        f"/predictions/{LITE}/..%2F..%2Fkey_file.json", "/predictions/%2Fetc%2Fpasswd", "/../../etc/passwd",
    ],
)  # fmt: skip
def test_urls_that_name_paths_reach_no_file(server, path):
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", path, body=(IMAGES / "cat.png").read_bytes(), headers=server.headers())
    response = connection.getresponse()
    body = response.read().decode(errors="replace")
    connection.close()
    assert response.status in (400, 404), (response.status, body[:300])
    assert "root:x:0:" not in body and server.management_key not in body


# --- the client and the key ----------------------------------------------------------------------


def rank_with_key(server, key: str, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    """rank.py given the key itself (--token), not the key file."""
    return run_client("rank", "--url", url or server.url, "--model", LITE, "--token", key, "--quiet", *args,
                      timeout=300)  # fmt: skip


def test_the_client_never_shows_the_key(server, tmp_path):
    key = server.key
    store, page = tmp_path / "s.sqlite", tmp_path / "report.html"
    runs = {
        "ranks": rank_with_key(server, key, "--images_folder", str(IMAGES), "--store", str(store), "--html", str(page)),
        "as json": rank_with_key(server, key, "--images_folder", str(IMAGES), "--store", str(store), "--format", "json"),
        "unknown model": rank_with_key(server, key, "--images_folder", str(IMAGES), "--no-store", "--model", "nope"),
        "unreachable": rank_with_key(server, key, "--images_folder", str(IMAGES), "--no-store", "--retries", "0",
                                     url=f"http://127.0.0.1:{free_port()}"),  # fmt: skip
    }
    assert runs["ranks"].returncode == 0 and runs["as json"].returncode == 0, runs["ranks"].stderr
    assert runs["unknown model"].returncode == 2 and runs["unreachable"].returncode == 2
    for name, run in runs.items():
        assert key not in run.stdout + run.stderr, name
        assert "Traceback" not in run.stderr, (name, run.stderr)
    assert key.encode() not in store.read_bytes() and key not in page.read_text()
    assert json.loads(runs["as json"].stdout)  # the JSON output is the ranking only
