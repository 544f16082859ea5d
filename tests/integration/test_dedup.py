"""client/dedup.py against real TorchServe and the store (the rules alone: tests/unit/test_dedup_rules.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from client.duplicates import CALIBRATED, seen_matches
from client.embedding import embed_files
from client.scan import describe
from client.store import open_store
from client.torchserve_client import EmbeddingClient
from devtools import IMAGES
from devtools.photos import edited_photo
from tests.conftest import LITE
from tests.support.browser import rendered_images
from tests.support.cli import json_frame, run_client

LITE_T = CALIBRATED["efficientnet_lite0"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos, edited copies of some, byte copies of others, and photos that match nothing."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for name in ("coffee.jpg", "rocket.jpg", "cat.png", "puppy.jpg", "guitar.jpg", "tent.jpg", "temple.jpg",
                 "black_cat.jpg"):  # fmt: skip
        shutil.copy(IMAGES / name, folder / name)
    edited_photo("coffee.jpg", "crop", 1).save(folder / "coffee_crop.jpg", quality=90)
    edited_photo("coffee.jpg", "flip", 1).save(folder / "coffee_mirror.jpg", quality=90)
    edited_photo("coffee.jpg", "caption", 2).save(folder / "sub" / "coffee_caption.jpg", quality=90)
    edited_photo("rocket.jpg", "jpeg", 1).save(folder / "rocket_small.jpg", quality=90)
    edited_photo("rocket.jpg", "rotate", 1).save(folder / "rocket_straightened.jpg", quality=90)
    edited_photo("cat.png", "brightness", 1).save(folder / "cat_bright.jpg", quality=90)
    shutil.copy(IMAGES / "cat.png", folder / "cat_copy.png")
    shutil.copy(IMAGES / "puppy.jpg", folder / "sub" / "puppy.jpg")
    # dated an hour ago, as a library's photos are: past the mtime granularity window (client/scan.py),
    # so the first run remembers every file's state whenever it runs
    hour_ago = time.time() - 3600
    for path in folder.rglob("*.*"):
        os.utime(path, (hour_ago, hour_ago))
    return folder


@pytest.fixture(scope="module")
def stored(server, photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The first run: embeds every distinct content once and keeps the vectors in a store."""
    store = tmp_path_factory.mktemp("dedup-store") / "store.sqlite"
    return store, run_client("dedup", str(photos), "--store", str(store), "--format", "json", server=server)


def groups_of(frame: pd.DataFrame) -> dict[str, tuple[str, set[str]]]:
    """Group tier and files, keyed by the group's first file."""
    out = {}
    for _, members in frame.groupby("group"):
        files = set(members["file"])
        out[sorted(files)[0]] = (members["group_tier"].iloc[0], files)
    return out


def test_tiers_on_a_small_generated_set(stored):
    _, result = stored
    frame = json_frame(result)
    assert groups_of(frame) == {
        "coffee.jpg": ("near", {"coffee.jpg", "coffee_crop.jpg", "coffee_mirror.jpg", "sub/coffee_caption.jpg"}),
        "cat.png": ("near", {"cat.png", "cat_copy.png", "cat_bright.jpg"}),
        "rocket.jpg": ("near", {"rocket.jpg", "rocket_small.jpg", "rocket_straightened.jpg"}),
        "puppy.jpg": ("exact", {"puppy.jpg", "sub/puppy.jpg"}),
    }
    assert list(frame.groupby("group").size()) == [4, 3, 3, 2]  # largest first
    ties = frame.set_index("file")
    assert ties.loc["cat_copy.png", "tier"] == "exact" and ties.loc["cat_copy.png", "score"] == 1.0
    assert ties.loc["cat_bright.jpg", "tier"] == "near" and "cosine" in ties.loc["cat_bright.jpg", "why"]
    assert "16 files, 14 distinct; 4 groups (1 exact, 3 near) holding 12 files" in result.stderr
    assert "sent 14 to the server" in result.stderr and "peak memory" in result.stderr


def test_second_run_sends_nothing_and_writes_csv(server, photos, stored, tmp_path):
    store, first = stored
    before = server.prediction_requests(LITE)
    out = tmp_path / "dupes.csv"
    result = run_client("dedup", str(photos), "--store", str(store), "--format", "csv", "--output", str(out),
                        server=server)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert server.prediction_requests(LITE) == before
    assert "sent 0 to the server, reused 14 from the store" in result.stderr
    # the first run remembered every file's state: a rerun costs a stat per file, and reads none
    assert "16 files: 0 read, 16 unchanged (stat only)" in result.stderr, result.stderr
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["group", "group_tier", "file", "tier", "score", "match", "why", "sha256", "path"]
    assert len(csv) == len(json_frame(first)) == 12


def test_similar_tier_is_opt_in_and_labelled(server, photos, stored):
    store, _ = stored
    plain = json_frame(run_client("dedup", str(photos), "--store", str(store), "--format", "json", server=server))
    assert "similar" not in set(plain["tier"])
    # cat.png and black_cat.jpg: same subject, another photo (cosine about 0.5 with this model)
    wide = json_frame(run_client("dedup", str(photos), "--store", str(store), "--format", "json", "--similar",
                                 "--similar-threshold", "0.45", server=server))  # fmt: skip
    cats = groups_of(wide)["black_cat.jpg"]
    assert cats[0] == "similar" and {"cat.png", "cat_bright.jpg"} <= cats[1]
    assert wide.set_index("file").loc["black_cat.jpg", "tier"] == "similar"


def test_store_alone_groups_everything_without_the_server(server, photos, stored):
    store, first = stored
    before = server.prediction_requests(LITE)
    result = run_client("dedup", "--store", str(store), "--format", "json", server=server)
    assert server.prediction_requests(LITE) == before
    frame = json_frame(result)
    assert sorted(map(len, (files for _, files in groups_of(frame).values()))) == [2, 3, 3, 4]
    assert set(frame["path"]) == set(json_frame(first)["path"])


def test_html_page_renders_a_thumbnail_per_file_in_chromium(server, photos, stored, tmp_path):
    store, _ = stored
    page = tmp_path / "dupes.html"
    result = run_client("dedup", str(photos), "--store", str(store), "--html", str(page), server=server)
    assert result.returncode == 0, result.stderr
    assert "exact" in result.stdout and "coffee_crop.jpg" in result.stdout  # the table on stdout
    ok, total = rendered_images(page, tmp_path / "chromium")
    assert total == 12 and ok == total
    assert page.read_text().count("<h2>Group ") == 4


def test_seen_finds_exact_and_near_copies_without_embedding_the_store_again(server, photos, stored, tmp_path):
    store_path, _ = stored
    new = tmp_path / "new"
    new.mkdir()
    edited_photo("rocket.jpg", "crop", 7).save(new / "rocket_cropped.jpg", quality=85)
    shutil.copy(IMAGES / "coffee.jpg", new / "coffee_again.jpg")
    Image.open(IMAGES / "flower.jpg").save(new / "flower.png")  # never seen
    client = EmbeddingClient(server.url, LITE, server.key, "test")
    with open_store(store_path) as store:
        files = [describe(p, new) for p in sorted(new.iterdir())]
        before = server.prediction_requests(LITE)
        embedded = embed_files(files, client, store, 8, progress=False)
        assert server.prediction_requests(LITE) - before == 1  # one request: only the three queries
        found = {
            f.name: seen_matches(store, embedded.identity, embedded.item(f.sha256), f.path, LITE_T) for f in files
        }
    assert [(m.tier, Path(m.paths[0]).name) for m in found["coffee_again.jpg"]][:1] == [("exact", "coffee.jpg")]
    near = {Path(p).name for m in found["rocket_cropped.jpg"] if m.tier == "near" for p in m.paths}
    assert "rocket.jpg" in near and near <= {"rocket.jpg", "rocket_small.jpg", "rocket_straightened.jpg"}
    assert found["flower.png"] == []


def test_bad_arguments_and_unknown_models_say_what_to_do(server, photos, stored, tmp_path):
    store, _ = stored
    missing = run_client("dedup", str(tmp_path / "nowhere"), server=server)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    other = run_client("dedup", "--store", str(store), "--model", "resnet18-embed", server=server)
    assert other.returncode == 2 and "run dedup.py or rank.py on a folder first" in other.stderr
    assert "Traceback" not in missing.stderr + other.stderr
