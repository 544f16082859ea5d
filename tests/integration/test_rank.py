"""client/rank.py against real TorchServe and the real stores."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from devtools import IMAGES, REPO
from devtools.images import repo_photos
from devtools.ports import free_port
from tests.conftest import LITE, stored_count
from tests.support.browser import rendered_images
from tests.support.cli import client_command, json_frame, run_client

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def distinct_copies(folder: Path, count: int) -> Path:
    """``count`` JPEGs with distinct bytes made from the real photos (re-encoded at varying quality)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = repo_photos()
    for i in range(count):
        source = Image.open(photos[i % len(photos)]).convert("RGB")
        source.save(folder / f"{i:03d}_{photos[i % len(photos)].stem}.jpg", quality=60 + i % 37)
    return folder


def test_defaults_rank_the_repo_images_with_the_other_cat_first(server, tmp_path):
    store = tmp_path / "store.sqlite"
    result = run_client("rank", "--store", str(store), "--images_folder", "images", server=server)
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "rank" in table and "cosine similarity (higher is closer)" in table
    first_row = next(line for line in table.splitlines() if re.match(r"^\|\s+1 \|", line))
    assert "black_cat.jpg" in first_row
    assert "reference: images/cat.png" in result.stderr and "cat" in result.stderr
    assert sum(line.startswith("|") and "|" in line[1:] for line in table.splitlines()) == 11  # header + 10


def test_second_run_sends_nothing_to_the_server(server, tmp_path):
    folder = distinct_copies(tmp_path / "photos", 30)
    store = tmp_path / "s.sqlite"
    shutil.copy(IMAGES / "cat.png", folder / "cat.png")
    first = json_frame(run_client("rank", "--images_folder", str(folder), "--store", str(store), "--format", "json",
                                  server=server))  # fmt: skip
    before = server.prediction_requests(LITE)
    second = run_client("rank", "--images_folder", str(folder), "--store", str(store), "--format", "json",
                        server=server)  # fmt: skip
    assert server.prediction_requests(LITE) == before
    assert "sent 0 to the server, reused 31" in second.stderr
    pd.testing.assert_frame_equal(first, json_frame(second))
    # an added file is embedded once, nothing else is sent again
    Image.open(IMAGES / "coffee.jpg").save(folder / "new.png")
    third = run_client("rank", "--images_folder", str(folder), "--store", str(store), "--format", "json", server=server)
    assert "sent 1 to the server" in third.stderr


def test_identical_bytes_are_embedded_once_and_marked(server, tmp_path):
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    shutil.copy(IMAGES / "coffee.jpg", folder / "a" / "x.jpg")
    shutil.copy(IMAGES / "coffee.jpg", folder / "b" / "x.jpg")  # same name, other folder, same bytes
    shutil.copy(IMAGES / "cat.png", folder / "cat.png")
    shutil.copy(IMAGES / "cat.png", folder / "cat_copy.png")
    result = run_client("rank", "--images_folder", str(folder), "--recursive", "--no-store", "--format", "json",
                        server=server)  # fmt: skip
    frame = json_frame(result)
    assert "sent 2 to the server" in result.stderr
    assert set(frame["file"]) == {"a/x.jpg", "b/x.jpg", "cat_copy.png"}  # the reference itself is left out
    assert frame.set_index("file").loc["cat_copy.png", "duplicate_of"] == "cat.png"
    assert frame.set_index("file").loc["b/x.jpg", "duplicate_of"] == "a/x.jpg"


@pytest.mark.parametrize("metric, ascending", [("euclidean", True), ("manhattan", True), ("dot", False)])
def test_metric_order_follows_its_kind(server, tmp_path, metric, ascending):
    result = run_client("rank", "--metric", metric, "--format", "csv", "--store", str(tmp_path / "s.sqlite"),
                        "--images_folder", "images", server=server)  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["score"]) == sorted(frame["score"], reverse=not ascending)
    assert frame.iloc[0]["file"] == "black_cat.jpg"


def test_csv_carries_every_row_including_failures_and_skips_non_images(server, tmp_path):
    folder = distinct_copies(tmp_path / "p", 14)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    out = tmp_path / "ranking.csv"
    result = run_client("rank", "--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--no-store",
                        "--format", "csv", "--output", str(out), server=server)  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 15 and frame["score"].notna().sum() == 14
    broken = frame[frame["file"] == "broken.jpg"].iloc[0]
    assert "corrupt_image" in broken["error"] or "unsupported_format" in broken["error"]
    assert "broken.jpg" in result.stderr  # the warning names the file
    assert "ranked 14, skipped 1 (not images), failed 1" in result.stderr


def test_a_damaged_file_is_sent_once_and_reported_failed_on_every_run(server, tmp_path):
    folder = distinct_copies(tmp_path / "p", 4)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    ranking = tmp_path / "ranking.json"
    args = ["--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--format", "json", "--output",
            str(ranking)]  # fmt: skip
    first = run_client("rank", *args, server=server)
    assert first.returncode == 0 and "sent 6 to the server" in first.stderr, first.stderr
    again = run_client("rank", *args, server=server)
    assert "sent 0 to the server, reused 5 from the store, 1 refused before (not sent again)" in again.stderr
    assert "such as " + str((folder / "broken.jpg").resolve()) in again.stderr
    broken = json_frame(ranking.read_text()).set_index("file").loc["broken.jpg"]
    assert broken["error"].split(":")[0] in ("corrupt_image", "unsupported_format") and pd.isna(broken["rank"])
    retried = run_client("rank", *args, "--retry-failed", server=server)
    assert "sent 1 to the server, reused 5 from the store" in retried.stderr, retried.stderr


def test_html_report_renders_every_thumbnail_in_chromium(server, tmp_path):
    page = tmp_path / "report.html"
    result = run_client("rank", "--store", str(tmp_path / "s.sqlite"), "--images_folder", "images", "--html", str(page),
                        "--top-k", "5", server=server)  # fmt: skip
    assert result.returncode == 0, result.stderr
    ok, total = rendered_images(page, tmp_path / "chromium")
    assert total == 6 and ok == total  # the reference and the top 5


def test_server_not_reachable_is_one_line_and_exit_code_2(server, tmp_path):
    result = run_client("rank", "--url", f"http://127.0.0.1:{free_port()}", "--token", "x", "--no-store", "--quiet",
                        "--retries", "1", timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert "cannot reach TorchServe at http://127.0.0.1:" in result.stderr and "serve.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_refused_key_says_which_key_and_where_and_never_prints_it(server, tmp_path):
    env = {**os.environ, "IMGSIM_TOKEN": "not-the-key-123"}
    result = run_client("rank", "--url", server.url, "--model", LITE, "--no-store", "--quiet", "--images_folder",
                        str(IMAGES), cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert "refused the inference key ($IMGSIM_TOKEN)" in result.stderr and "key_file.json" in result.stderr
    assert "not-the-key-123" not in result.stderr + result.stdout


def aged(folder: Path) -> Path:
    """Every file in ``folder`` dated an hour ago: past the mtime granularity window, so its state is remembered."""
    old = time.time() - 3600
    for path in folder.iterdir():
        os.utime(path, (old, old))
    return folder


def test_a_rerun_over_an_unchanged_folder_reads_no_file_and_rehash_reads_them_all(server, tmp_path):
    folder = distinct_copies(tmp_path / "photos", 20)
    shutil.copy(IMAGES / "cat.png", folder / "cat.png")
    aged(folder)
    rank = ("rank", "--images_folder", str(folder), "--store", str(tmp_path / "s.sqlite"))
    first = run_client(*rank, server=server)
    assert first.returncode == 0, first.stderr
    assert "21 files: 21 read, 0 unchanged (stat only)" in first.stderr
    again = run_client(*rank, server=server)
    assert "21 files: 0 read, 21 unchanged (stat only)" in again.stderr
    assert "sent 0 to the server, reused 21" in again.stderr
    # rewritten in place, same size, a new mtime: read again (and embedded: it is other bytes now)
    photo = next(folder.glob("000_*.jpg"))
    data = bytearray(photo.read_bytes())
    data[-3] ^= 0xFF  # inside the entropy-coded data, before the end marker: still a decodable JPEG
    photo.write_bytes(bytes(data))
    os.utime(photo, (time.time() - 60, time.time() - 60))
    changed = run_client(*rank, server=server)
    assert changed.returncode == 0, changed.stderr
    assert "21 files: 1 read, 20 unchanged (stat only)" in changed.stderr
    assert "sent 1 to the server" in changed.stderr
    forced = run_client(*rank, "--rehash", server=server)
    assert "21 files: 21 read, 0 unchanged (stat only)" in forced.stderr
    assert "sent 0 to the server" in forced.stderr
    plain = run_client("rank", "--images_folder", str(folder), "--no-store", server=server)
    assert "21 files: 21 read, 0 unchanged (stat only)" in plain.stderr  # no store: nothing to remember states in


def test_killed_run_leaves_a_sound_store_and_the_rerun_embeds_only_the_rest(server, tmp_path):
    folder = aged(distinct_copies(tmp_path / "many", 120))
    store = tmp_path / "kill.sqlite"
    command = client_command("rank", "--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--store",
                             str(store), "--batch-size", "4", "--concurrency", "1", server=server)  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    stored = 0
    while time.monotonic() < deadline and stored < 20:
        time.sleep(0.2)
        stored = stored_count(store)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 20 <= stored < 121, "the run finished before it could be killed"
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kept = stored_count(store)
    result = run_client("rank", "--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--store",
                        str(store), server=server)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sent {121 - kept} to the server, reused {kept}" in result.stderr
    # every file was hashed before the first batch was sent, and those states were kept too
    assert "121 files: 0 read, 121 unchanged (stat only)" in result.stderr


def test_postgres_store_behaves_the_same(server, tmp_path, pg_url):
    folder = distinct_copies(tmp_path / "pg", 12)
    first = run_client("rank", "--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--store",
                       pg_url, "--format", "json", server=server)  # fmt: skip
    assert "sent 13 to the server" in first.stderr, first.stderr
    second = run_client("rank", "--images_folder", str(folder), "--ref_image", str(IMAGES / "cat.png"), "--store",
                        pg_url, "--format", "json", server=server)  # fmt: skip
    assert "sent 0 to the server" in second.stderr
    pd.testing.assert_frame_equal(json_frame(first), json_frame(second), check_exact=False, atol=1e-5)


def test_collection_search_ranks_everything_stored_for_the_model(server, tmp_path):
    store = tmp_path / "collection.sqlite"
    assert run_client("rank", "--store", str(store), "--images_folder", "images", server=server).returncode == 0
    result = run_client("rank", "--store", str(store), "--ref_image", str(IMAGES / "black_cat.jpg"), "--format", "json",
                        server=server)  # fmt: skip
    frame = json_frame(result)
    assert "sent 0 to the server" in result.stderr
    assert frame.iloc[0]["file"] == "cat.png"
    assert "black_cat.jpg" not in set(frame["file"])
    assert len(frame) == 10


def test_seen_answers_exact_near_or_not_seen_from_the_store(server, tmp_path):
    store = tmp_path / "seen.sqlite"
    assert run_client("rank", "--store", str(store), "--images_folder", "images", server=server).returncode == 0
    edited = tmp_path / "coffee_edit.jpg"
    Image.open(IMAGES / "coffee.jpg").convert("RGB").resize((500, 333)).save(edited, quality=70)
    copy = tmp_path / "tent_copy.jpg"
    shutil.copy(IMAGES / "tent.jpg", copy)
    unseen = tmp_path / "noise.png"
    Image.effect_noise((300, 200), 60).convert("RGB").save(unseen)
    answers = {}
    for name, path in {"copy": copy, "edit": edited, "new": unseen}.items():
        result = run_client("rank", "--store", str(store), "--ref_image", str(path), "--seen", "--format", "json",
                            server=server)  # fmt: skip
        assert result.returncode == 0, result.stderr
        answers[name] = result.stderr.strip().splitlines()[-1]
    assert "seen:" in answers["copy"] and "exact" in answers["copy"]
    assert "seen:" in answers["edit"] and "near" in answers["edit"]
    assert answers["new"].endswith("not seen before")
