"""Faults and load against real processes: a killed model worker, the readiness check while its
replacement loads, a killed client, a server stopped midway, and 8 clients for 60 s. Each test that hurts a server starts its own (the session one stays up).

About 4 minutes on 2 cores; `pytest tests/integration/test_faults.py` runs them alone.
"""

from __future__ import annotations

import http.server
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import psutil
import pytest
import requests
from PIL import Image

from client.torchserve_client import EmbeddingClient, ServerError, Upload
from devtools import IMAGES, REPO
from devtools.images import repo_photos
from devtools.load import run_load
from devtools.torchserve import TorchServe
from tests.conftest import LITE, stored_count
from tests.support.cli import client_command, json_frame, run_client
from tests.support.waiting import wait_for

FOLDER_SIZE = 200
RANKING = ["rank", "file", "score", "label", "sha256"]  # the columns two runs must agree on


@pytest.fixture(scope="module")
def own_server(tmp_path_factory, model_store):
    """A TorchServe of this module's own, whose worker may be killed."""
    ts = TorchServe.start(tmp_path_factory.mktemp("faults-torchserve"), model_store, (LITE,))
    yield ts
    ts.stop()


def salted_copies(folder: Path, count: int) -> Path:
    """``count`` JPEGs made from the real photos, their bytes unlike any other test's (a salt in a comment)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = repo_photos()
    salt = uuid.uuid4().hex
    for i in range(count):
        source = photos[i % len(photos)]
        Image.open(source).convert("RGB").save(
            folder / f"{i:03d}_{source.stem}.jpg", quality=60 + i % 37, comment=f"{salt}-{i}".encode()
        )
    return folder


def rank_args(folder: Path, *args: str) -> tuple[str, ...]:
    """rank.py's arguments for ranking ``folder`` against its first photo, as JSON."""
    return ("--images_folder", str(folder), "--ref_image", "000_astronaut.jpg", "--format", "json", *args)


# --- load -----------------------------------------------------------------------------------------


def test_8_clients_for_60_s_get_no_unexpected_error_and_worker_memory_stays_flat(own_server):
    result = run_load(
        own_server.url, LITE, own_server.key, clients=8, duration=60, warmup=15,
        worker_pids=own_server.worker_pids, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    assert result.unexpected == 0, result.unexpected_examples
    assert result.requests > 100 and result.expected_image_errors > 0  # it really ran, bad images included
    assert result.worker_pids_start == result.worker_pids_end  # no worker died under load
    assert result.rss_mb_end <= 1.10 * result.rss_mb_after_warmup, result.rss_mb_samples


# --- a killed worker ------------------------------------------------------------------------------


def test_a_killed_worker_is_restarted_and_the_ranking_equals_a_clean_runs(own_server, tmp_path):
    folder = salted_copies(tmp_path / "photos", FOLDER_SIZE)
    clean = run_client("rank", *rank_args(folder, "--no-store"), server=own_server)
    assert clean.returncode == 0, clean.stderr

    store = tmp_path / "store.sqlite"
    before_log = len(own_server.log("access_log.log").splitlines())
    process = subprocess.Popen(
        client_command("rank", *rank_args(folder, "--store", str(store), "--batch-size", "8", "--concurrency", "2"),
                       server=own_server),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: stored_count(store) >= 40 or process.poll() is not None, 300, "40 stored images")
    assert process.poll() is None, "the run finished before the worker could be killed"
    victims = own_server.worker_pids()
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    pd.testing.assert_frame_equal(json_frame(out)[RANKING], json_frame(clean)[RANKING], check_exact=False, atol=1e-4)
    assert f"sent {FOLDER_SIZE} to the server" in err

    # TorchServe restarted the worker, and the client retried what the dead worker had in hand
    assert own_server.worker_pids() and not set(own_server.worker_pids()) & set(victims)
    statuses = [line.split('" ')[1].split()[0] for line in own_server.log("access_log.log").splitlines()[before_log:]
                if "/predictions/" in line]  # fmt: skip
    assert set(statuses) <= {"200", "500", "507"}, statuses  # "Worker died." is all the client ever saw
    assert "backend worker process died" in own_server.log("ts_log.log")
    # Almost always the kill fails a request in flight (500 or 507, then retried); when it lands
    # between batches the queued requests simply wait for the new worker. Both must end the same.
    print(f"answers during the run: {pd.Series(statuses).value_counts().to_dict()}", file=sys.stderr)


def test_readiness_fails_while_a_restarted_worker_loads_though_ping_says_healthy(own_server):
    assert own_server.ready(LITE)
    victims = own_server.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # TorchServe starts a new worker about a second later; freeze it wherever its loading has got to
    wait_for(lambda: set(own_server.worker_pids()) - set(victims), 60, "TorchServe to start a new worker")
    loading = sorted(set(own_server.worker_pids()) - set(victims))
    for pid in loading:
        os.kill(pid, signal.SIGSTOP)
    try:
        held = own_server.readiness(LITE, timeout=3)
        ping = requests.get(f"{own_server.url}/ping", headers=own_server.headers(), timeout=10)
        assert held.returncode == 1, held.stdout
        assert "not ready" in held.stderr and LITE in held.stderr, held.stderr
        assert ping.status_code == 200 and ping.json()["status"] == "Healthy"  # why /ping is not the check
    finally:
        for pid in loading:
            os.kill(pid, signal.SIGCONT)
    after = own_server.readiness(LITE, wait=120)
    assert after.returncode == 0, after.stderr
    assert f"ready: {LITE}: 1/1 workers READY" in after.stdout
    own_server.answers_now(LITE)  # and ready means served: no retry needed


def test_a_restarted_worker_loads_the_model_the_build_exported_and_serves_at_once(own_server):
    def loads() -> list[str]:  # the handler's one line per worker start (embed_handler.initialize)
        return [line for line in own_server.log().splitlines() if LITE in line and "imgsim ready" in line]

    before = loads()
    victims = own_server.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert own_server.readiness(LITE, wait=120).returncode == 0
    own_server.answers_now(LITE)
    started = loads()[len(before) :]
    assert len(started) == len(victims), started
    # no export, no weights read: the worker only loads the files in the archive (seconds: docs/BENCHMARKS.md)
    assert all(" from the exported efficientnet_lite0." in line for line in started), started


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers POSTs with the statuses and bodies it is given, in turn, on a free loopback port."""

    def __init__(self, answers: list[tuple[int, bytes]]):
        self.answers, self.seen = list(answers), 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                status, body = outer.answers[min(outer.seen, len(outer.answers) - 1)]
                outer.seen += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


WORKER_DIED_500 = (500, b'{\n  "code": 500,\n  "type": "InternalServerException",\n  "message": "Worker died."\n}\n')
WORKER_DIED_507 = (507, WORKER_DIED_500[1].replace(b"500", b"507"))
OK = (200, b'[{"file": "cat.png", "embedding": [1.0], "predictions": [], "model": {}}]')


@pytest.mark.parametrize("died", [WORKER_DIED_500, WORKER_DIED_507], ids=["500", "507"])
def test_the_client_retries_the_answers_of_a_dying_worker(died):
    """What TorchServe 0.12 answers the requests in flight when their worker dies (see docs/SECURITY.md)."""
    server = ScriptedServer([died, died, OK])
    client = EmbeddingClient(server.url, "m", "key", "test", retries=3, backoff=0.01)
    [[result]] = list(client.embed_batches([[Upload("cat.png", IMAGES / "cat.png")]]))
    assert result.error is None and server.seen == 3
    server.shutdown()


def test_a_worker_that_keeps_dying_ends_the_run_with_a_clear_message():
    server = ScriptedServer([WORKER_DIED_500])
    client = EmbeddingClient(server.url, "m", "key", "test", retries=2, backoff=0.01)
    with pytest.raises(ServerError, match=r"model worker died on each of 3 tries .* logs/model_log.log"):
        list(client.embed_batches([[Upload("cat.png", IMAGES / "cat.png")]]))
    server.shutdown()


def test_any_other_500_is_not_retried():
    server = ScriptedServer([(500, b'{"code": 500, "message": "something else"}'), OK])
    client = EmbeddingClient(server.url, "m", "key", "test", retries=3, backoff=0.01)
    with pytest.raises(ServerError, match="answered 500"):
        list(client.embed_batches([[Upload("cat.png", IMAGES / "cat.png")]]))
    assert server.seen == 1
    server.shutdown()


# --- a killed client, PostgreSQL store ------------------------------------------------------------


def pg_consistency(url: str, killed_ports: set[int]) -> dict[str, int]:
    """Checks what a killed writer could break; returns the number of images per table."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        # the dead client's sessions (found by their client ports) end, and no lock is left waiting
        wait_for(
            lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)", (sorted(killed_ports),)
            ).fetchone()[0] == 0, 30, "the killed client's session to end",
        )  # fmt: skip
        assert db.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] == 0
        db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        tables = {}
        for model_id, dim in db.execute("SELECT id, embedding_dim FROM imgsim.models").fetchall():
            table = f"imgsim.images_{model_id}"
            assert db.execute(f"SELECT count(*) FROM verify_heapam('{table}')").fetchone()[0] == 0  # heap pages sound
            bad = db.execute(
                f"SELECT count(*) FROM {table} WHERE vector_dims(embedding) <> %s "
                "OR jsonb_typeof(predictions) <> 'array' OR jsonb_array_length(predictions) = 0", (dim,),
            ).fetchone()[0]  # fmt: skip
            assert bad == 0, f"{bad} half-written rows in {table}"
            tables[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for (index,) in db.execute(
            "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'imgsim' AND a.amname = 'btree'"
        ).fetchall():
            db.execute("SELECT bt_index_check(%s::regclass, true)", (index,))  # index agrees with its table
        union = " UNION ALL ".join(f"SELECT sha256 FROM {t}" for t in tables) or "SELECT NULL::text"
        orphans = db.execute(f"SELECT count(*) FROM imgsim.paths WHERE sha256 NOT IN ({union})").fetchone()[0]
        assert orphans == 0, "paths recorded for images that were never stored"
    return tables


def pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        ids = [i for (i,) in db.execute("SELECT id FROM imgsim.models").fetchall()] if db.execute(
            "SELECT to_regclass('imgsim.models')"
        ).fetchone()[0] else []  # fmt: skip
        return sum(db.execute(f"SELECT count(*) FROM imgsim.images_{i}").fetchone()[0] for i in ids)


def test_a_killed_client_leaves_postgres_consistent_and_the_rerun_embeds_only_the_rest(server, pg_url, tmp_path):
    folder = salted_copies(tmp_path / "pg", FOLDER_SIZE)
    before = pg_count(pg_url)
    command = client_command("rank", *rank_args(folder, "--store", pg_url, "--batch-size", "4", "--concurrency", "1"),
                             server=server)  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: pg_count(pg_url) - before >= 20 or process.poll() is not None, 300, "20 stored images")
    pg_port = urlsplit(pg_url).port
    ports = {c.laddr.port for c in psutil.Process(process.pid).net_connections("tcp") if c.raddr and c.raddr.port == pg_port}
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = pg_count(pg_url) - before
    assert 20 <= kept < FOLDER_SIZE and ports, "the run finished before it could be killed"
    pg_consistency(pg_url, ports)
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"sent {FOLDER_SIZE - kept} to the server, reused {kept}" in rerun.stderr
    assert pg_count(pg_url) - before == FOLDER_SIZE
    pg_consistency(pg_url, set())


# --- TorchServe stopped midway --------------------------------------------------------------------


def test_stopping_torchserve_midway_ends_the_run_with_a_clear_message_and_keeps_the_store(model_store, tmp_path):
    doomed = TorchServe.start(tmp_path / "torchserve", model_store, (LITE,))
    try:
        folder = salted_copies(tmp_path / "photos", FOLDER_SIZE)
        store = tmp_path / "store.sqlite"
        command = client_command("rank", *rank_args(folder, "--store", str(store), "--batch-size", "4",
                                                    "--concurrency", "1", "--retries", "2"), server=doomed)  # fmt: skip
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: stored_count(store) >= 20 or process.poll() is not None, 300, "20 stored images")
        assert process.poll() is None, "the run finished before the server could be stopped"
    finally:
        doomed.stop()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert "Traceback" not in err and out == ""
    kept = stored_count(store)
    assert 20 <= kept < FOLDER_SIZE
    [message] = [line for line in err.splitlines() if line.startswith("rank.py: ")]
    assert f"TorchServe at {doomed.url}" in message or "TorchServe answered" in message, err
    assert f"The {kept} images embedded before that are saved in the store: rerun the same command" in err
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
