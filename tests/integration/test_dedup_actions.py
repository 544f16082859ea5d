"""dedup.py acting on its groups against real TorchServe: plan, move, undo, trash, keep rules, marks, the HTML plan.

Each test copies one module-wide photo folder (tests move files) and shares one store, so
each photo is embedded once; the rules alone are in tests/unit/test_dedup_plan.py and test_moves.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from client.moves import COLUMNS, MANIFEST_NAME, TRASH_RECORD_NAME
from client.scan import sha256_of
from devtools import IMAGES
from devtools.photos import edited_photo
from tests.conftest import LITE
from tests.support.browser import rendered_images
from tests.support.cli import json_frame, run_client

# the groups the LITE model finds here (tests/integration/test_dedup.py has the same photos)
GROUPS = {
    "coffee.jpg": {"coffee.jpg", "coffee_crop.jpg", "sub/coffee_caption.jpg"},
    "cat.png": {"cat.png", "cat_copy.png", "cat_bright.jpg"},
    "puppy.jpg": {"puppy.jpg", "sub/puppy.jpg"},
}
ALONE = {"rocket.jpg", "guitar.jpg", "black_cat.jpg"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    (folder / "sub").mkdir()
    for name in ("coffee.jpg", "cat.png", "puppy.jpg", "rocket.jpg", "guitar.jpg", "black_cat.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    edited_photo("coffee.jpg", "crop", 1).save(folder / "coffee_crop.jpg", quality=90)
    edited_photo("coffee.jpg", "caption", 2).save(folder / "sub" / "coffee_caption.jpg", quality=90)
    edited_photo("cat.png", "brightness", 1).save(folder / "cat_bright.jpg", quality=90)
    shutil.copy(IMAGES / "cat.png", folder / "cat_copy.png")
    shutil.copy(IMAGES / "puppy.jpg", folder / "sub" / "puppy.jpg")
    return folder


@pytest.fixture(scope="module")
def store(server, pristine, tmp_path_factory) -> Path:
    """One store for the module: the first run embeds every distinct content once."""
    path = tmp_path_factory.mktemp("actions-store") / "store.sqlite"
    first = run_client("dedup", str(pristine), "--store", str(path), "--format", "json", server=server)
    assert groups_of(json_frame(first)) == GROUPS
    return path


@pytest.fixture
def photos(pristine, tmp_path) -> Path:
    """A fresh copy of the photos for one test, with their dates."""
    return Path(shutil.copytree(pristine, tmp_path / "photos"))


def groups_of(frame: pd.DataFrame) -> dict[str, set[str]]:
    out = {}
    for _, members in frame.groupby("group"):
        files = set(members["file"])
        out[sorted(files)[0]] = files
    return out


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (the store and the records left out)."""
    skip = {MANIFEST_NAME, TRASH_RECORD_NAME}
    return {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.startswith(".imgsim-store")}  # fmt: skip


def dedup(server, photos: Path, store: Path, *args: str, env: dict[str, str] | None = None):
    return run_client("dedup", str(photos), "--store", str(store), *args, server=server, env=env)


def test_dry_run_prints_the_plan_and_touches_nothing(server, photos, store, tmp_path):
    before, sent = tree(photos), server.prediction_requests(LITE)
    dest = tmp_path / "dupes"
    result = dedup(server, photos, store, "--move-to", str(dest), "--dry-run", "--format", "json")
    plan = json_frame(result)
    assert server.prediction_requests(LITE) == sent  # the store had everything
    assert tree(photos) == before and not dest.exists()
    assert groups_of(plan) == GROUPS
    for _, members in plan.groupby("group"):
        assert list(members["action"]).count("keep") == 1
        assert set(members["action"]) == {"keep", "move"}
    moving = plan[plan["action"] == "move"]
    assert set(moving["status"]) == {"would move"} and len(moving) == 5
    assert all(p == str(dest / f) for p, f in zip(moving["new_path"], moving["file"], strict=True))
    assert "would move 5 files" in result.stderr


def test_move_keeps_one_per_group_and_undo_restores_the_folder_byte_for_byte(server, photos, store, tmp_path):
    before = tree(photos)
    dest = tmp_path / "dupes"
    result = dedup(server, photos, store, "--move-to", str(dest), "--format", "json")
    plan = json_frame(result)
    kept = set(plan[plan["action"] == "keep"]["file"])
    assert len(kept) == 3 and set(plan[plan["action"] == "move"]["status"]) == {"moved"}
    assert set(tree(photos)) == kept | ALONE
    assert set(tree(photos).values()) | set(tree(dest).values()) == set(before.values())  # every content, byte for byte
    assert tree(dest) == {f: before[f] for f in plan[plan["action"] == "move"]["file"]}  # same relative paths
    with open(dest / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and [r["status"] for r in rows] == ["planned"] * 5 + ["moved"] * 5
    assert "moved 5 files" in result.stderr and f"--undo {dest}" in result.stderr
    again = json_frame(dedup(server, photos, store, "--format", "json"))
    assert len(again) == 0  # no duplicates left in the folder

    undone = run_client("dedup", "--undo", str(dest), "--format", "json", server=server)
    assert set(json_frame(undone)["status"]) == {"restored"}
    assert tree(photos) == before
    twice = run_client("dedup", "--undo", str(dest), server=server)
    assert twice.returncode == 0 and "restored 0 files" in twice.stderr and "5 already in place" in twice.stderr
    assert tree(photos) == before


def test_a_move_folder_inside_the_folder_is_left_out_of_later_scans(server, photos, store):
    before = tree(photos)
    dest = photos / "duplicates"
    moved = dedup(server, photos, store, "--move-to", str(dest), "--format", "json")
    assert (json_frame(moved)["status"] == "moved").sum() == 5
    later = dedup(server, photos, store, "--format", "json")
    assert len(json_frame(later)) == 0 and "left out 5 files in folders that duplicates were moved into" in later.stderr
    ranked = run_client("rank", "--images_folder", str(photos), "--recursive", "--ref_image", "cat.png", "--store",
                        str(store), "--format", "json", server=server)  # fmt: skip
    assert "left out 5 files in folders that duplicates were moved into" in ranked.stderr
    assert len(json_frame(ranked)) == len(tree(photos)) - 5 - 1  # neither the moved copies nor the reference
    assert run_client("dedup", "--undo", str(dest), server=server).returncode == 0
    assert tree(photos) == before  # every photo is back; the manifest stays in duplicates/ as the record


def _kept(server, photos, store, *args: str) -> dict[str, str]:
    """The kept file of each group (by its first file) under a plan made with ``args``."""
    plan = json_frame(dedup(server, photos, store, "--move-to", str(photos.parent / "d"), "--dry-run",
                            "--format", "json", *args))  # fmt: skip
    return {sorted(m["file"])[0]: m[m["action"] == "keep"]["file"].item() for _, m in plan.groupby("group")}


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.size[0] * image.size[1]


def test_keep_rules_choose_the_kept_copy(server, photos, store):
    def best(files: set[str], key) -> str:
        return min(sorted(files), key=key)

    default = _kept(server, photos, store)
    for first, files in GROUPS.items():
        stat = {f: os.stat(photos / f) for f in files}
        assert default[first] == best(files, lambda f: (-_pixels(photos / f), -stat[f].st_size, stat[f].st_mtime_ns))
    largest = _kept(server, photos, store, "--keep", "largest")
    assert largest["coffee.jpg"] == best(GROUPS["coffee.jpg"], lambda f: -os.stat(photos / f).st_size)
    assert _kept(server, photos, store, "--keep", "shortest-path")["puppy.jpg"] == "puppy.jpg"
    os.utime(photos / "sub" / "coffee_caption.jpg", ns=(1, 10**9))  # 1970: the oldest by far
    os.utime(photos / "cat_bright.jpg", ns=(4 * 10**18, 4 * 10**18))  # 2096: the newest by far
    assert _kept(server, photos, store, "--keep", "oldest")["coffee.jpg"] == "sub/coffee_caption.jpg"
    assert _kept(server, photos, store, "--keep", "newest")["cat.png"] == "cat_bright.jpg"


def test_similar_groups_move_only_when_named(server, photos, store, tmp_path):
    similar = ["--similar", "--similar-threshold", "0.45", "--format", "json"]
    dest = tmp_path / "dupes"
    plain = dedup(server, photos, store, "--move-to", str(dest), *similar)
    plan = json_frame(plain)
    assert "black_cat.jpg" not in set(plan["file"]) and (plan["status"] == "moved").sum() == 5
    assert "black_cat.jpg" in set(tree(photos)) and "of similar groups left alone" in plain.stderr
    assert run_client("dedup", "--undo", str(dest), server=server).returncode == 0
    named = json_frame(dedup(server, photos, store, "--move-to", str(dest), "--move-tiers", "exact,near,similar",
                             *similar))  # fmt: skip
    cats = named[named["file"].isin({"black_cat.jpg", "cat.png"})]
    assert cats["group"].nunique() == 1 and (named["status"] == "moved").sum() >= 6
    assert set(named[named["group"] == cats["group"].iloc[0]]["action"]) == {"keep", "move"}
    refused = dedup(server, photos, store, "--move-to", str(dest), "--move-tiers", "similar")
    assert refused.returncode == 2 and "needs --similar" in refused.stderr


def test_trash_sends_the_copies_to_the_desktop_trash(server, photos, store, tmp_path):
    before = tree(photos)
    (tmp_path / "home").mkdir()  # nothing may land in a real trash
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    result = dedup(server, photos, store, "--trash", "--format", "json", env=env)
    plan = json_frame(result)
    trashed = set(plan[plan["action"] == "trash"]["file"])
    assert len(trashed) == 5 and set(plan[plan["action"] == "trash"]["status"]) == {"trashed"}
    files, info = tmp_path / "xdg" / "Trash" / "files", tmp_path / "xdg" / "Trash" / "info"
    assert sorted(p.name for p in files.iterdir()) == sorted(Path(f).name for f in trashed)
    assert sorted(p.name for p in info.iterdir()) == sorted(Path(f).name + ".trashinfo" for f in trashed)
    assert set(tree(photos).values()) | {sha256_of(p) for p in files.iterdir()} == set(before.values())
    assert (photos / TRASH_RECORD_NAME).exists() and "trashed 5 files" in result.stderr


def test_marked_not_duplicates_never_come_back_in_a_group(server, photos, store, tmp_path):
    own = tmp_path / "store.sqlite"  # the mark must not reach the module's other tests
    with sqlite3.connect(store) as src, sqlite3.connect(own) as dst:
        src.backup(dst)
    sent = server.prediction_requests(LITE)
    marked = dedup(server, photos, own, "--not-duplicates", "cat.png", "cat_bright.jpg",
                   "--not-duplicates", str(photos / "coffee.jpg"), "coffee_crop.jpg")  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    assert "marked cat.png and cat_bright.jpg as not duplicates" in marked.stdout
    groups = groups_of(json_frame(dedup(server, photos, own, "--format", "json")))
    assert server.prediction_requests(LITE) == sent
    assert groups["cat.png"] == {"cat.png", "cat_copy.png"}  # cat_copy.png has cat.png's bytes: marked too
    assert not any({"coffee.jpg", "coffee_crop.jpg"} <= files for files in groups.values())  # not even via a third
    same = dedup(server, photos, own, "--not-duplicates", "cat.png", "cat_copy.png")
    assert same.returncode == 2 and "identical bytes" in same.stderr


def test_html_page_shows_the_plan_with_thumbnails(server, photos, store, tmp_path):
    page, dest = tmp_path / "plan.html", tmp_path / "dupes"
    result = dedup(server, photos, store, "--move-to", str(dest), "--html", str(page))
    assert result.returncode == 0, result.stderr
    ok, total = rendered_images(page, tmp_path / "chromium")
    assert total == 8 and ok == total  # the moved ones rendered from where they are now
    text = page.read_text()
    assert text.count('class="badge badge-keep"') == 3 and text.count('class="badge badge-moved"') == 5
    assert text.count(f"-&gt; {dest}/") == 5  # where each moved file went


def test_a_file_that_cannot_be_moved_is_reported_and_the_exit_code_says_so(server, photos, store, tmp_path):
    dest = tmp_path / "dupes"
    dest.mkdir()
    (dest / "sub").write_text("a file where the sub folder would go")
    result = dedup(server, photos, store, "--move-to", str(dest), "--format", "json")
    assert result.returncode == 1
    assert "skipped" in result.stderr and "cannot make the folder" in result.stderr
    assert (dest / "sub").read_text() == "a file where the sub folder would go"


def test_bad_action_arguments_say_what_to_do(server, photos, store, tmp_path):
    no_folder = run_client("dedup", "--store", str(store), "--move-to", str(tmp_path / "d"), server=server)
    assert no_folder.returncode == 2 and "needs a FOLDER" in no_folder.stderr
    itself = dedup(server, photos, store, "--move-to", str(photos))
    assert itself.returncode == 2 and "or a folder above it" in itself.stderr
    both = dedup(server, photos, store, "--move-to", str(tmp_path / "d"), "--trash")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    nothing = run_client("dedup", "--undo", str(tmp_path / "never"), server=server)
    assert nothing.returncode == 2 and "the folder given to --move-to" in nothing.stderr
    assert "Traceback" not in no_folder.stderr + itself.stderr + both.stderr + nothing.stderr
