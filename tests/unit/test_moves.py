"""Moving duplicates and back without a server: the manifest first, per-file checks, other filesystems, undo."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import client.moves as moves
from client.duplicates import Group, Member
from client.duplicates.plan import make_plan
from client.moves import COLUMNS, MANIFEST_NAME, TRASH_RECORD_NAME, move_files, plan_moves, trash_files, undo
from client.scan import sha256_of
from devtools import IMAGES


def _member(folder: Path, relative: str, tier: str = "near") -> Member:
    path = folder / relative
    return Member(relative, str(path), sha256_of(path), tier, 1.0, "x", "why")


@pytest.fixture
def folder(tmp_path) -> Path:
    """coffee.jpg with a byte copy in sub/ and a smaller near copy; cat.png with a byte copy; a lone photo."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    shutil.copy(IMAGES / "coffee.jpg", root / "coffee.jpg")
    shutil.copy(IMAGES / "coffee.jpg", root / "sub" / "coffee.jpg")
    from PIL import Image

    Image.open(IMAGES / "coffee.jpg").resize((64, 64)).save(root / "coffee_small.jpg")
    shutil.copy(IMAGES / "cat.png", root / "cat.png")
    shutil.copy(IMAGES / "cat.png", root / "sub" / "cat copy.png")
    shutil.copy(IMAGES / "rocket.jpg", root / "rocket.jpg")
    for name in ("coffee.jpg", "cat.png"):  # the oldest of each pair of byte copies
        os.utime(root / name, ns=(1, 1_000_000_000))
    return root


def groups_in(folder: Path) -> list[Group]:
    return [
        Group("near", [_member(folder, r, t) for r, t in
                       (("coffee.jpg", "exact"), ("sub/coffee.jpg", "exact"), ("coffee_small.jpg", "near"))]),
        Group("exact", [_member(folder, r, "exact") for r in ("cat.png", "sub/cat copy.png")]),
    ]  # fmt: skip


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root, the manifest left out."""
    return {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}  # fmt: skip


def every_content(*roots: Path) -> set[str]:
    return {sha for root in roots if root.exists() for sha in tree(root).values()}


def manifest_rows(dest: Path) -> list[dict[str, str]]:
    with open(dest / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_move_keeps_one_per_group_mirrors_paths_and_undo_restores_the_folder_exactly(folder, tmp_path):
    dest, before = tmp_path / "dupes", tree(folder)
    steps = make_plan(groups_in(folder), folder)
    outcomes, manifest = move_files(plan_moves(steps, folder, dest), dest)
    assert [o.status for o in outcomes] == ["moved"] * 3
    assert every_content(folder, dest) == set(before.values())  # nothing lost, byte for byte
    assert sorted(tree(folder)) == ["cat.png", "coffee.jpg", "rocket.jpg"]  # most pixels, then largest, then oldest
    assert tree(dest) == {r: before[r] for r in ("sub/coffee.jpg", "coffee_small.jpg", "sub/cat copy.png")}
    rows = manifest_rows(dest)
    assert list(rows[0]) == COLUMNS and manifest == dest / MANIFEST_NAME
    assert [(r["action"], r["status"]) for r in rows] == [("move", "planned")] * 3 + [("move", "moved")] * 3
    row = rows[0]
    assert Path(row["original_path"]).is_absolute() and row["new_path"] == str(dest / "sub" / "coffee.jpg")
    assert (row["group"], row["tier"], row["kept_path"]) == ("1", "near", str(folder / "coffee.jpg"))
    assert row["why_kept"].startswith("kept coffee.jpg: older")

    back, _ = undo(dest)
    assert [o.status for o in back] == ["restored"] * 3
    assert tree(folder) == before
    assert [p.name for p in dest.rglob("*")] == [MANIFEST_NAME]  # the folders the undo emptied are gone
    assert [r["status"] for r in manifest_rows(dest)][-3:] == ["restored"] * 3
    again, _ = undo(dest)  # idempotent: nothing left to do, nothing fails
    assert [o.status for o in again] == ["in place"] * 3 and tree(folder) == before


def test_a_file_changed_after_scanning_is_not_moved(folder, tmp_path):
    dest = tmp_path / "dupes"
    planned = plan_moves(make_plan(groups_in(folder), folder), folder, dest)
    small, copy = folder / "coffee_small.jpg", folder / "sub" / "cat copy.png"
    stamp = os.stat(small)
    data = bytearray(small.read_bytes())
    data[-3] ^= 0xFF
    small.write_bytes(bytes(data))  # same size and date, other bytes: only the hash can tell
    os.utime(small, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with open(copy, "ab") as f:
        f.write(b"edited")
    outcomes, _ = move_files(planned, dest)
    status = {o.move.source.name: (o.status, o.reason) for o in outcomes}
    assert status["coffee_small.jpg"] == ("skipped", "changed since it was scanned (content)")
    assert status["cat copy.png"] == ("skipped", "changed since it was scanned (size or date)")
    assert status["coffee.jpg"] == ("moved", "")
    assert small.read_bytes() == bytes(data) and copy.exists()
    assert [r["note"] for r in manifest_rows(dest) if r["status"] == "skipped"] == [
        "changed since it was scanned (content)", "changed since it was scanned (size or date)"]  # fmt: skip


def test_the_manifest_is_on_disk_before_the_first_move(folder, tmp_path, monkeypatch):
    dest = tmp_path / "dupes"
    seen = []
    real = moves.move_one

    def checking(m, since="scanned"):
        seen.append(len(manifest_rows(dest)))
        return real(m, since)

    monkeypatch.setattr(moves, "move_one", checking)
    move_files(plan_moves(make_plan(groups_in(folder), folder), folder, dest), dest)
    assert seen == [3, 3, 3]  # every planned row written before any file moved


def test_a_move_across_filesystems_copies_checks_the_hash_then_removes(folder, tmp_path, monkeypatch):
    def no_links_across(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(moves.os, "link", no_links_across)
    dest, before = tmp_path / "dupes", tree(folder)
    mtime = os.stat(folder / "coffee_small.jpg").st_mtime_ns
    outcomes, _ = move_files(plan_moves(make_plan(groups_in(folder), folder), folder, dest), dest)
    assert [o.status for o in outcomes] == ["moved"] * 3
    assert not (folder / "coffee_small.jpg").exists()
    assert os.stat(dest / "coffee_small.jpg").st_mtime_ns == mtime  # the date travels with the copy
    assert every_content(folder, dest) == set(before.values())
    undo(dest)
    assert tree(folder) == before


def test_a_copy_that_does_not_verify_is_removed_and_the_original_stays(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(moves.os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross")))
    real = moves.sha256_of
    dest = tmp_path / "dupes"
    monkeypatch.setattr(moves, "sha256_of", lambda p: "0" * 64 if Path(p).is_relative_to(dest) else real(p))
    before = tree(folder)
    outcomes, _ = move_files(plan_moves(make_plan(groups_in(folder), folder), folder, dest), dest)
    assert {o.status for o in outcomes} == {"skipped"}
    assert all("did not verify" in o.reason for o in outcomes)
    assert tree(folder) == before and tree(dest) == {}


def test_a_real_move_to_another_filesystem(folder, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here (/dev/shm is on the same one as the temporary folder)")
    dest = Path(tempfile.mkdtemp(dir=shm, prefix="imgsim-test-"))
    try:
        before = tree(folder)
        outcomes, _ = move_files(plan_moves(make_plan(groups_in(folder), folder), folder, dest), dest)
        assert [o.status for o in outcomes] == ["moved"] * 3
        assert every_content(folder, dest) == set(before.values())
        assert [o.status for o in undo(dest)[0]] == ["restored"] * 3
        assert tree(folder) == before
    finally:
        shutil.rmtree(dest)


def test_a_taken_name_gets_a_suffix_and_nothing_is_ever_overwritten(folder, tmp_path):
    dest = tmp_path / "dupes"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "cat copy.png").write_bytes(b"someone else's file")
    planned = plan_moves(make_plan(groups_in(folder), folder), folder, dest)
    target = {m.source.name: m for m in planned}["cat copy.png"]
    assert target.target == dest / "sub" / "cat copy (2).png" and "exists" in target.note
    (dest / "coffee_small.jpg").write_bytes(b"appeared after planning")
    outcomes, _ = move_files(planned, dest)
    status = {o.move.source.name: (o.status, o.reason) for o in outcomes}
    assert status["coffee_small.jpg"] == ("skipped", f"{dest / 'coffee_small.jpg'} exists (never overwritten)")
    assert status["cat copy.png"][0] == "moved"
    assert (dest / "sub" / "cat copy.png").read_bytes() == b"someone else's file"
    assert (dest / "coffee_small.jpg").read_bytes() == b"appeared after planning"


def test_runs_into_one_folder_append_and_undo_answers_each_move_once(folder, tmp_path):
    dest, before = tmp_path / "dupes", tree(folder)
    groups = groups_in(folder)
    first, _ = move_files(plan_moves(make_plan(groups[1:], folder), folder, dest), dest)
    second, _ = move_files(plan_moves(make_plan(groups[:1], folder), folder, dest), dest)
    rows = manifest_rows(dest)
    assert len({r["run"] for r in rows}) == 2 and len(rows) == 2 * (len(first) + len(second))
    assert every_content(folder, dest) == set(before.values())
    (folder / "sub" / "cat copy.png").write_bytes(b"a new file where the moved one was")
    back, _ = undo(dest)
    status = {o.move.source.name: (o.status, o.reason) for o in back}
    assert status["cat copy.png"][0] == "skipped" and "taken by another file" in status["cat copy.png"][1]
    assert [s for s, _ in status.values()].count("restored") == 2
    assert (dest / "sub" / "cat copy.png").exists()  # still safe where it was moved
    assert every_content(folder, dest) >= set(before.values())


def test_undo_dry_run_touches_nothing_and_a_missing_manifest_says_so(folder, tmp_path):
    dest = tmp_path / "dupes"
    move_files(plan_moves(make_plan(groups_in(folder), folder), folder, dest), dest)
    after, rows = tree(folder), manifest_rows(dest)
    outcomes, _ = undo(dest, dry_run=True)
    assert [o.status for o in outcomes] == ["would restore"] * 3
    assert tree(folder) == after and manifest_rows(dest) == rows
    with pytest.raises(FileNotFoundError, match="--move-to"):
        undo(tmp_path / "elsewhere")


def test_trash_writes_its_record_first_and_skips_a_changed_file(folder, monkeypatch):
    trashed = []

    def fake_send2trash(path):
        assert (folder / TRASH_RECORD_NAME).exists()  # the record is written before anything is trashed
        trashed.append(Path(path).name)
        os.unlink(path)  # stands in for the move into the trash

    import send2trash

    monkeypatch.setattr(send2trash, "send2trash", fake_send2trash)
    planned = plan_moves(make_plan(groups_in(folder), folder), folder, None)
    assert all(m.target is None for m in planned)
    (folder / "coffee_small.jpg").write_bytes(b"edited")
    outcomes = trash_files(planned, folder / TRASH_RECORD_NAME)
    assert sorted(trashed) == ["cat copy.png", "coffee.jpg"]
    assert {o.move.source.name: o.status for o in outcomes} == {
        "coffee.jpg": "trashed", "cat copy.png": "trashed", "coffee_small.jpg": "skipped"}  # fmt: skip
    with open(folder / TRASH_RECORD_NAME, newline="", encoding="utf-8") as f:
        assert [r["new_path"] for r in csv.DictReader(f)] == [moves.TRASH] * 6
