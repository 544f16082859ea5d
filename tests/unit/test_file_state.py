"""The file-state cache: a file is read only when it is new or its stat changed (client.scan, index's pass).

The store cases shared with PostgreSQL are in tests/integration/test_store.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from client import reconcile, scan
from client.embedding import Embedded
from client.reconcile import Scope, plan_folder
from client.scan import sha256_of, scan_files
from client.store import open_store

OLD = time.time() - 3600  # well outside the mtime granularity window


def aged(path: Path, data: bytes, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file whose bytes the scan reads, in order."""
    read: list[Path] = []
    original = scan.sha256_of
    monkeypatch.setattr(scan, "sha256_of", lambda p: read.append(Path(p)) or original(p))
    return read


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [aged(tmp_path / "photos" / f"{i}.jpg", bytes([i]) * 100) for i in range(4)]


def rescan(store, paths: list[Path], reads: list[Path], **kwargs) -> scan.Scanned:
    reads.clear()
    return scan_files(paths, paths[0].parent, store, progress=False, **kwargs)


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, photos: list[Path], reads: list[Path]) -> None:
    with open_store(tmp_path / "s.sqlite") as store:
        first = rescan(store, photos, reads)
        assert (first.read, first.unchanged) == (4, 0) and reads == photos
        second = rescan(store, photos, reads)
        assert reads == [] and (second.read, second.unchanged) == (0, 4)
        assert [f.sha256 for f in second.files] == [sha256_of(p) for p in photos]
        assert [f.name for f in second.files] == [p.name for p in photos]
        assert second.line() == "4 files: 0 read, 4 unchanged (stat only)"


def test_a_rewrite_with_the_same_size_and_a_new_mtime_is_hashed_again(
    tmp_path: Path, photos: list[Path], reads: list[Path]
) -> None:  # fmt: skip
    with open_store(tmp_path / "s.sqlite") as store:
        rescan(store, photos, reads)
        aged(photos[1], b"x" * 100, OLD + 1)  # same size, same inode, mtime one second later
        again = rescan(store, photos, reads)
        assert reads == [photos[1]] and again.files[1].sha256 == sha256_of(photos[1])
        assert rescan(store, photos, reads).read == 0  # the new state is remembered


def test_a_file_replaced_by_another_with_the_same_size_and_mtime_is_hashed_again(
    tmp_path: Path, photos: list[Path], reads: list[Path]
) -> None:  # fmt: skip
    with open_store(tmp_path / "s.sqlite") as store:
        rescan(store, photos, reads)
        other = aged(tmp_path / "other.jpg", b"y" * 100)  # another inode, same size and mtime
        os.replace(other, photos[2])
        again = rescan(store, photos, reads)
        assert reads == [photos[2]] and again.files[2].sha256 == sha256_of(photos[2])


def test_rehash_reads_every_file(tmp_path: Path, photos: list[Path], reads: list[Path]) -> None:
    with open_store(tmp_path / "s.sqlite") as store:
        rescan(store, photos, reads)
        # a tool that rewrites a file and puts its old mtime back: stat alone cannot tell
        stat = photos[0].stat()
        with open(photos[0], "r+b") as f:
            f.write(b"z")
        os.utime(photos[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert rescan(store, photos, reads).files[0].sha256 != sha256_of(photos[0])  # trusted the stat
        forced = rescan(store, photos, reads, rehash=True)
        assert reads == photos and forced.read == 4 and forced.files[0].sha256 == sha256_of(photos[0])
        assert rescan(store, photos, reads).files[0].sha256 == sha256_of(photos[0])  # and remembered it


def test_a_file_written_within_the_mtime_granularity_is_hashed_again_next_time(
    tmp_path: Path, reads: list[Path]
) -> None:  # fmt: skip
    fresh = aged(tmp_path / "fresh.jpg", b"just written", time.time())
    old = aged(tmp_path / "old.jpg", b"long done")
    with open_store(tmp_path / "s.sqlite") as store:
        rescan(store, [fresh, old], reads)
        assert rescan(store, [fresh, old], reads).read == 1 and reads == [fresh]
        # once its mtime is past the window (the clock moved on), it is remembered
        later = time.time() + 2 * scan.MTIME_GRANULARITY
        reads.clear()
        scan_files([fresh, old], tmp_path, store, progress=False, clock=lambda: later)
        assert rescan(store, [fresh, old], reads).read == 0


def test_without_a_store_every_file_is_read(photos: list[Path], reads: list[Path]) -> None:
    assert rescan(None, photos, reads).read == 4
    assert rescan(None, photos, reads).read == 4 and reads == photos


def test_a_killed_scan_keeps_the_states_of_its_finished_batches(tmp_path: Path, monkeypatch) -> None:
    files = [aged(tmp_path / f"{i:02d}.jpg", bytes([i]) * 10) for i in range(25)]
    monkeypatch.setattr(scan, "STATE_BATCH", 10)
    original, read = scan.sha256_of, []

    def killed_at_the_23rd(path: Path) -> str:
        if len(read) == 22:
            raise KeyboardInterrupt
        read.append(Path(path))
        return original(path)

    monkeypatch.setattr(scan, "sha256_of", killed_at_the_23rd)
    with open_store(tmp_path / "s.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            scan_files(files, tmp_path, store, progress=False)
        assert len(store.file_states(map(str, files))) == 20  # two batches of 10 committed, the third lost
        monkeypatch.setattr(scan, "sha256_of", lambda p: read.append(Path(p)) or original(p))
        read.clear()
        assert scan_files(files, tmp_path, store, progress=False).read == 5 and read == files[20:]


def test_forgetting_a_path_forgets_its_file_state(tmp_path: Path, photos: list[Path], reads: list[Path]) -> None:
    with open_store(tmp_path / "s.sqlite") as store:
        rescan(store, photos, reads)
        store.forget_paths([str(photos[0])])
        assert set(store.file_states(map(str, photos))) == {str(p) for p in photos[1:]}


def test_an_index_pass_reads_only_what_changed_since_any_earlier_pass(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "photos"
    files = [aged(root / f"{i}.jpg", bytes([i]) * 10) for i in range(3)]
    scope = Scope.of(root, True, str(tmp_path / "s.sqlite"))
    read: list[Path] = []
    monkeypatch.setattr(reconcile, "sha256_of", lambda p: read.append(Path(p)) or sha256_of(p))
    with open_store(tmp_path / "s.sqlite") as store:
        first = plan_folder(scope, {}, settle=5, now=time.time(), store=store)
        assert first.scan_line() == "3 files: 3 read, 0 unchanged (stat only)"
        read.clear()
        aged(files[1], b"rewritten!", OLD + 5)
        # a new process: no in-memory cache, only the store
        second = plan_folder(scope, {}, settle=5, now=time.time(), store=store)
        assert read == [files[1]] and second.scan_line() == "3 files: 1 read, 2 unchanged (stat only)"
        read.clear()
        assert plan_folder(scope, {}, settle=5, now=time.time(), store=store, rehash=True).read == 3
        assert read == files


def test_a_changed_file_applied_by_index_keeps_its_new_state(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "photos"
    photo = aged(root / "a.jpg", b"first")
    scope = Scope.of(root, True, str(tmp_path / "s.sqlite"))
    # only the states matter here: the changed content is not embedded
    monkeypatch.setattr(reconcile, "embed_files", lambda *a, **k: Embedded(None))
    with open_store(tmp_path / "s.sqlite") as store:
        store.remember_paths({sha256_of(photo): str(photo)})
        aged(photo, b"other", OLD + 5)
        plan = plan_folder(scope, store.known_paths(str(root)), settle=5, now=time.time(), store=store)
        assert len(plan.changed) == 1
        reconcile.apply(plan, store, None, 32)  # type: ignore[arg-type]
        assert store.known_paths(str(root)) == {}  # the old content's path is forgotten...
        assert store.file_states([str(photo)])[str(photo)]["sha256"] == sha256_of(photo)  # ...the new state kept


def test_file_states_are_remembered_at_absolute_paths_only(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="absolute"):
        store.remember_file_states([{"path": "a.jpg", "device": 1, "inode": 2, "size": 1, "mtime_ns": 3,
                                     "sha256": "ab" * 32}])  # fmt: skip
