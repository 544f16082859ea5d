"""client/index.py against a real TorchServe: one pass (cron), --watch (inotify and polling), and
rank.py / dedup.py answering from the store it keeps. The rules alone: tests/unit/test_index.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from client.scan import sha256_of
from devtools import IMAGES, REPO
from devtools.images import repo_photos
from devtools.torchserve import TorchServe
from tests.conftest import LITE, stored_count
from tests.support.cli import client_command, json_frame, run_client

STORE = ".imgsim-store.sqlite"  # index.py's default: FOLDER/.imgsim-store.sqlite
OLD = time.time() - 3600  # an mtime past any settle time: the file is complete


def put(folder: Path, name: str, source: str | Path) -> Path:
    """A copy of a repo photo at ``folder/name``, dated an hour ago (a finished copy)."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(IMAGES / source if isinstance(source, str) else source, target)
    os.utime(target, (OLD, OLD))
    return target


def index(folder: Path, *args: str, server: TorchServe) -> dict:
    """One pass, its JSON record."""
    result = run_client("index", str(folder), "--format", "json", *args, server=server)
    [record] = json_frame(result).to_dict("records")
    return record


def paths(store: Path) -> dict[str, str]:
    """path -> sha256 recorded in a SQLite store, read-only (another process may be writing it)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT path, sha256 FROM paths"))
    except sqlite3.Error:
        return {}


def vectors(store: Path) -> set[str]:
    """The contents a SQLite store holds vectors of, read-only."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return {row[0] for row in db.execute("SELECT sha256 FROM images")}
    except sqlite3.Error:
        return set()


def logged_requests(server: TorchServe) -> int:
    """The server's count of prediction requests once its access log has stopped growing (it is written late)."""
    count, deadline = server.prediction_requests(LITE), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1)
        count, before = server.prediction_requests(LITE), count
        if count == before:
            break
    return count


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(0.1)


# --- one pass ---------------------------------------------------------------------------------------


def test_a_pass_embeds_the_folder_and_a_rerun_sends_nothing(server, tmp_path):
    folder = tmp_path / "photos"
    for name in ("coffee.jpg", "rocket.jpg", "cat.png", "tent.jpg"):
        put(folder, name, name)
    put(folder, "trip/puppy.jpg", "puppy.jpg")
    put(folder, "trip/puppy_copy.jpg", "puppy.jpg")  # the same bytes: embedded once
    (folder / "notes.txt").write_text("not an image")
    first = index(folder, server=server)
    assert (first["new"], first["sent"], first["deleted"], first["failed"]) == (6, 5, 0, 0)
    recorded = paths(folder / STORE)
    assert recorded[str((folder / "trip" / "puppy_copy.jpg").resolve())] == sha256_of(IMAGES / "puppy.jpg")
    assert len(recorded) == 6 and len(vectors(folder / STORE)) == 5
    before = logged_requests(server)
    second = index(folder, server=server)
    assert (second["unchanged"], second["new"], second["sent"]) == (6, 0, 0)
    assert (first["read"], second["read"], second["stat_only"]) == (6, 0, 6)  # the file states from the first pass
    assert logged_requests(server) == before
    assert index(folder, "--rehash", server=server)["read"] == 6


def test_a_changed_file_is_embedded_again_and_its_old_content_forgotten(server, tmp_path):
    folder = tmp_path / "photos"
    photo = put(folder, "a.jpg", "coffee.jpg")
    put(folder, "b.jpg", "rocket.jpg")
    index(folder, server=server)
    put(folder, "a.jpg", "guitar.jpg")  # new bytes at the same path
    record = index(folder, server=server)
    assert (record["changed"], record["unchanged"], record["sent"], record["dropped"]) == (1, 1, 1, 1)
    assert paths(folder / STORE)[str(photo.resolve())] == sha256_of(IMAGES / "guitar.jpg")
    assert sha256_of(IMAGES / "coffee.jpg") not in vectors(folder / STORE)


def test_a_deleted_file_is_forgotten_and_rank_and_dedup_answer_without_it(server, tmp_path):
    folder = tmp_path / "photos"
    for name in ("coffee.jpg", "rocket.jpg", "black_cat.jpg", "puppy.jpg", "tent.jpg", "temple.jpg"):
        put(folder, name, name)
    put(folder, "tent_copy.jpg", "tent.jpg")
    store = str(folder / STORE)
    assert index(folder, server=server)["sent"] == 6

    def answers() -> tuple[set[str], set[str]]:
        """The files rank.py ranks against the cat, and those dedup.py groups, both from the store alone."""
        ranked = json_frame(run_client("rank", "--store", store, "--ref_image", str(IMAGES / "cat.png"),
                                       "--format", "json", server=server))  # fmt: skip
        grouped = run_client("dedup", "--store", store, "--format", "json", server=server)
        assert grouped.returncode == 0, grouped.stderr
        return set(ranked["file"]), {Path(row["file"]).name for row in json.loads(grouped.stdout)}

    ranked, grouped = answers()
    assert "black_cat.jpg" in ranked and {"tent.jpg", "tent_copy.jpg"} <= grouped
    (folder / "black_cat.jpg").unlink()
    (folder / "tent_copy.jpg").unlink()
    record = index(folder, server=server)
    assert (record["deleted"], record["dropped"], record["sent"]) == (2, 1, 0)  # tent's content is still at tent.jpg
    assert sha256_of(IMAGES / "black_cat.jpg") not in vectors(folder / STORE)
    ranked, grouped = answers()
    assert "black_cat.jpg" not in ranked and ranked and not grouped


def test_a_file_written_within_the_settle_time_is_left_for_later(server, tmp_path):
    folder = tmp_path / "photos"
    put(folder, "done.jpg", "coffee.jpg")
    copying = folder / "copying.jpg"
    shutil.copy(IMAGES / "rocket.jpg", copying)  # its mtime is now: it may still be being written
    record = index(folder, "--settle", "30", server=server)
    assert (record["new"], record["changing"], record["sent"]) == (1, 1, 1)
    assert str(copying.resolve()) not in paths(folder / STORE)
    os.utime(copying, (OLD, OLD))  # it has not changed since
    record = index(folder, "--settle", "30", server=server)
    assert (record["new"], record["changing"], record["sent"]) == (1, 0, 1)


def test_a_pass_stopped_by_sigterm_keeps_its_batches_and_the_rerun_sends_only_the_rest(server, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    photos = repo_photos()
    for i in range(60):  # distinct bytes: re-encoded at varying quality
        Image.open(photos[i % len(photos)]).convert("RGB").save(folder / f"{i:03d}.jpg", quality=50 + i % 45)
        os.utime(folder / f"{i:03d}.jpg", (OLD, OLD))
    store = folder / STORE
    command = client_command("index", str(folder), "--batch-size", "2", "--concurrency", "1", server=server)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for("the first batches", lambda: stored_count(store) >= 6 or process.poll() is not None, timeout=300)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    kept = stored_count(store)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "rerun to go on" in stderr and "Traceback" not in stderr
    assert 6 <= kept < 60
    record = index(folder, server=server)
    assert (record["sent"], record["unchanged"] + record["new"]) == (60 - kept, 60)


def test_a_postgres_store_is_kept_current_the_same_way(server, tmp_path, pg_url):
    folder = tmp_path / "photos"
    for name in ("coffee.jpg", "rocket.jpg", "tent.jpg"):
        put(folder, name, name)
    first = index(folder, "--store", pg_url, server=server)
    assert (first["new"], first["deleted"]) == (3, 0)  # sent: 0 when an earlier test stored these contents
    (folder / "rocket.jpg").unlink()
    put(folder, "tent.jpg", "guitar.jpg")
    second = index(folder, "--store", pg_url, server=server)
    assert (second["unchanged"], second["changed"], second["deleted"]) == (1, 1, 1)
    third = index(folder, "--store", pg_url, server=server)
    assert (third["unchanged"], third["sent"]) == (2, 0)


# --- --watch ----------------------------------------------------------------------------------------


@pytest.fixture
def watching(server, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts ``index.py FOLDER --watch --settle 2 --rescan 0 --format json ARGS``; stops it at the end."""
    started: list[subprocess.Popen] = []

    def start(folder: Path, *args: str) -> subprocess.Popen:
        command = client_command("index", str(folder), "--watch", "--settle", "2", "--rescan", "0", "--format",
                                 "json", *args, server=server)  # fmt: skip
        log = open(tmp_path / f"watch{len(started)}.log", "w")
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        process.log = Path(log.name)  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def logged(log: Path, what: str) -> int:
    """The sum of "N <what>" over the rounds a watch reported on stderr (each ends "; sent N to the server")."""
    rounds = [line.split("; sent ")[0] for line in log.read_text().splitlines() if "; sent " in line]
    return sum(int(n) for line in rounds for n in re.findall(rf"(\d+) {what}\b", line))


@pytest.mark.parametrize("mode", [[], ["--poll", "0.5"]], ids=["inotify", "polling"])
def test_watch_embeds_arrivals_once_complete_and_forgets_deletions(server, tmp_path, watching, mode):
    folder = tmp_path / "photos"
    first = put(folder, "first.jpg", "coffee.jpg")
    store = folder / STORE
    watch = watching(folder, *mode)
    wait_for("the first pass", lambda: str(first.resolve()) in paths(store))
    root = folder.resolve()

    copied = shutil.copy(IMAGES / "rocket.jpg", folder / "copied.jpg")  # a photo copied in
    wait_for("the copied photo", lambda: paths(store).get(str(root / "copied.jpg")) == sha256_of(Path(copied)))

    whole = (IMAGES / "tent.jpg").read_bytes()
    (root / "sub").mkdir()
    with open(root / "sub" / "halves.jpg", "wb") as out:  # written in two halves with a pause
        out.write(whole[: len(whole) // 2])
        out.flush()
        time.sleep(0.5)
        out.write(whole[len(whole) // 2 :])
    wait_for("the whole photo", lambda: str(root / "sub" / "halves.jpg") in paths(store))
    assert paths(store)[str(root / "sub" / "halves.jpg")] == sha256_of(IMAGES / "tent.jpg")

    (root / "copied.jpg").rename(root / "renamed.jpg")  # moved: the old path forgotten, nothing sent again
    wait_for(
        "the rename", lambda: str(root / "renamed.jpg") in paths(store) and str(root / "copied.jpg") not in paths(store)
    )
    first.unlink()
    wait_for("the deletion", lambda: str(root / "first.jpg") not in paths(store))
    assert sha256_of(IMAGES / "coffee.jpg") not in vectors(store)
    (root / "sub").rename(root / "album")  # a folder moved: its files too, nothing sent again
    wait_for(
        "the folder's move",
        lambda: set(paths(store)) == {str(root / "renamed.jpg"), str(root / "album" / "halves.jpg")},
    )
    # the store is written before the round reports: stop only once every round has said what it did
    wait_for("the rounds' reports", lambda: logged(watch.log, "new") == 5 and logged(watch.log, "deleted") == 3)

    watch.send_signal(signal.SIGTERM)
    out, _ = watch.communicate(timeout=60)
    log = watch.log.read_text()
    assert watch.returncode == 0, log
    assert ("(inotify)" if not mode else "(polling every 0.5 s)") in log and "stopped" in log.splitlines()[-1]
    rounds = [json.loads(line) for line in out.splitlines()]
    total = {key: sum(r[key] for r in rounds) for key in ("new", "changed", "deleted", "sent", "failed")}
    assert rounds[0]["new"] == 1
    # three contents sent once each: the half photo never (it would have failed, or come back as changed),
    # the renamed and moved ones not again
    assert total == {"new": 5, "changed": 0, "deleted": 3, "sent": 3, "failed": 0}


def test_watch_outlives_an_unusable_server_and_catches_up(server, tmp_path, watching):
    folder = tmp_path / "photos"
    folder.mkdir()
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "not-the-key"}, "management": {"key": "x"}}))
    watch = watching(folder, "--token-file", str(key_file))
    wait_for("the watch to start", lambda: "watching" in watch.log.read_text())
    put(folder, "a.jpg", "coffee.jpg")
    wait_for("the refusal", lambda: "files wait; trying again in 5 s" in watch.log.read_text())
    assert watch.poll() is None and "refused the inference key" in watch.log.read_text()
    shutil.copy(server.key_file, key_file)  # the right key (a restarted server writes a new one)
    assert str(folder.resolve() / "a.jpg") not in paths(folder / STORE)
    wait_for("the retry", lambda: sha256_of(IMAGES / "coffee.jpg") in vectors(folder / STORE))
    assert str(folder.resolve() / "a.jpg") in paths(folder / STORE)
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=60)
    assert watch.returncode == 0, watch.log.read_text()
