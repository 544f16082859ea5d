"""index.py's parts without a server: the settle rule, the folder-against-store plan, the inotify fallback.

The same behaviour end to end, against a real TorchServe, is tests/integration/test_index.py.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import queue
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from client import reconcile
from client.reconcile import Scope, apply, plan_folder, plan_paths
from client.scan import sha256_of
from client.settle import Settler
from client.store import open_store
from client.torchserve_client import EmbeddingClient, Upload
from client.watch import PathEvents, start_observer, stop_observer, unwatched_folders
from tests.support.store_rows import RESNET

OLD = time.time() - 3600  # an mtime well past any settle time


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def aged(path: Path, data: bytes = b"\xff\xd8 photo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))
    return path


# --- the settle rule ------------------------------------------------------------------------------


def test_a_growing_file_is_not_ready_until_it_stops_changing(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"first half")
    settler.mark(str(photo))
    for _ in range(4):  # it grows every 3 s: never 5 s the same
        assert not settler.poll().ready
        clock.now += 3
        with open(photo, "ab") as f:
            f.write(b" more")
    assert not settler.poll().ready
    clock.now += 4.9
    assert not settler.poll()
    clock.now += 0.2
    settled = settler.poll()
    assert list(settled.ready) == [str(photo)] and settled.ready[str(photo)].size == photo.stat().st_size
    assert str(photo) not in settler and not settler.poll()  # handed back once


def test_a_file_unchanged_for_the_settle_time_is_ready(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    photo = aged(tmp_path / "b.jpg")
    settler.mark(str(photo))
    assert not settler.poll()  # the first look starts the wait
    clock.now += 5
    assert list(settler.poll().ready) == [str(photo)]


def test_an_event_restarts_the_wait_even_when_stat_looks_the_same(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    photo = aged(tmp_path / "c.jpg")
    settler.mark(str(photo))
    settler.poll()
    clock.now += 4
    settler.mark(str(photo))  # rewritten in place, same size, and the mtime too coarse to tell
    clock.now += 4
    assert not settler.poll()
    clock.now += 1
    assert list(settler.poll().ready) == [str(photo)]


def test_a_deleted_file_is_gone_once_absent_for_the_settle_time(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    photo = aged(tmp_path / "d.jpg")
    settler.mark(str(photo))
    settler.poll()
    photo.unlink()
    settler.mark(str(photo))
    (tmp_path / "trip").mkdir()
    settler.mark(str(tmp_path / "trip"))
    settled = settler.poll()
    assert settled.folders == [str(tmp_path / "trip")] and not settled.gone and not settled.ready
    clock.now += 5
    assert settler.poll().gone == [str(photo)] and len(settler) == 0


def test_a_file_saved_by_delete_and_recreate_is_changed_not_gone(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    photo = aged(tmp_path / "e.jpg")
    settler.mark(str(photo))
    photo.unlink()
    settler.poll()
    clock.now += 2
    aged(photo, b"saved again")
    settler.mark(str(photo))
    clock.now += 4
    assert not settler.poll()
    clock.now += 5
    assert list(settler.poll().ready) == [str(photo)]


def test_both_ends_of_a_rename_are_handed_back_together(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(5, clock)
    old, new = tmp_path / "old.jpg", tmp_path / "new.jpg"
    aged(old).rename(new)
    settler.mark(str(old))
    settler.mark(str(new))
    settler.poll()
    clock.now += 5
    settled = settler.poll()
    assert settled.gone == [str(old)] and list(settled.ready) == [str(new)]


# --- what an index covers and what it plans ---------------------------------------------------------


def test_scope_leaves_out_hidden_files_the_store_and_what_is_not_an_image(tmp_path: Path) -> None:
    scope = Scope.of(tmp_path, True, str(tmp_path / "photos.sqlite"))
    root = str(tmp_path)
    assert scope.wants(f"{root}/a.JPG", False) and scope.wants(f"{root}/trip/b.heic", False)
    assert scope.wants(f"{root}/trip", True)
    for path in (f"{root}/.a.jpg", f"{root}/.sync/b.jpg", f"{root}/notes.txt", f"{root}/photos.sqlite",
                 f"{root}/photos.sqlite-wal", f"{root}-other/a.jpg", root):  # fmt: skip
        assert not scope.wants(path, False), path
    flat = Scope.of(tmp_path, False, "postgresql://db/x")
    assert flat.wants(f"{root}/a.jpg", False) and not flat.wants(f"{root}/trip/b.jpg", False)
    assert not flat.covers(f"{root}/trip/b.jpg") and flat.covers(f"{root}/a.jpg")


def test_a_pass_tells_new_changed_unchanged_deleted_and_still_changing_apart(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    same = aged(root / "same.jpg", b"same")
    changed = aged(root / "trip" / "changed.jpg", b"new bytes")
    aged(root / "new.png", b"new")
    fresh = root / "copying.jpg"
    fresh.write_bytes(b"half a photo")  # mtime now: may still be being written
    aged(root / "was_image.txt", b"renamed from was_image.jpg")
    known = {
        str(same): sha256_of(same), str(changed): "0" * 64, str(root / "gone.jpg"): "1" * 64,
        str(root / "was_image.jpg"): "2" * 64, str(fresh): "3" * 64, str(tmp_path / "elsewhere.jpg"): "4" * 64,
    }  # fmt: skip
    plan = plan_folder(Scope.of(root, True, str(root / ".store.sqlite")), known, settle=5, now=time.time())
    assert [f.name for f in plan.new] == ["new.png"]
    assert [f.name for f in plan.changed] == ["trip/changed.jpg"] and plan.changed[0].sha256 == sha256_of(changed)
    assert [f.name for f in plan.unchanged] == ["same.jpg"]
    assert sorted(plan.deleted) == [str(root / "gone.jpg"), str(root / "was_image.jpg")]
    assert plan.changing == [str(fresh)]  # left for later, and its old record kept: not deleted
    flat = plan_folder(Scope.of(root, False, str(root / ".s")), known, settle=5, now=time.time())
    assert str(changed) not in flat.deleted  # out of a --no-recursive pass's scope, not deleted


def test_a_rescan_reads_only_files_whose_stat_changed(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "photos"
    for i in range(3):
        aged(root / f"{i}.jpg", bytes([i]) * 10)
    scope = Scope.of(root, True, str(root / ".s"))
    hashes: reconcile.HashCache = {}
    plan_folder(scope, {}, settle=5, now=time.time(), hashes=hashes)
    read: list[Path] = []
    monkeypatch.setattr(reconcile, "sha256_of", lambda p: read.append(Path(p)) or sha256_of(p))
    aged(root / "1.jpg", b"rewritten")
    plan = plan_folder(scope, {}, settle=5, now=time.time(), hashes=hashes)
    assert read == [root / "1.jpg"] and len(plan.new) == 3


def test_a_vanished_folder_deletes_everything_known_below_it(tmp_path: Path) -> None:
    root = tmp_path
    known = {f"{root}/trip/a.jpg": "a" * 64, f"{root}/trip/x/b.jpg": "b" * 64, f"{root}/trip2/c.jpg": "c" * 64}
    plan = plan_paths(Scope.of(root, True, "x"), ready=[f"{root}/gone.jpg"], gone=[f"{root}/trip"], known=known)
    assert sorted(plan.deleted) == [f"{root}/trip/a.jpg", f"{root}/trip/x/b.jpg"]
    assert not plan.files


class NoServer(EmbeddingClient):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "resnet18-embed", None, "test")

    def embed_batches(self, batches, on_result=None):
        raise AssertionError(f"nothing should be sent, got {[u.name for b in batches for u in b]}")


def _stored(store, path: Path) -> None:
    """``path``'s content in the store, as a pass against a server would have left it."""
    client = NoServer()
    store.remember_endpoint(client.url, client.model, RESNET)
    item = {"sha256": sha256_of(path), "embedding": np.ones(RESNET["embedding_dim"], np.float32), "predictions": []}
    store.put_many(RESNET, [item], {item["sha256"]: str(path)})


@pytest.mark.parametrize("over_another", [False, True], ids=["to a new name", "over another file"])
def test_a_renamed_file_keeps_its_vector_and_nothing_is_sent(tmp_path: Path, over_another: bool) -> None:
    root = tmp_path / "photos"
    photo = aged(root / "a.jpg", b"the photo")
    target = aged(root / "b.jpg", b"another photo") if over_another else root / "b.jpg"
    scope = Scope.of(root, True, str(tmp_path / "s.sqlite"))
    with open_store(tmp_path / "s.sqlite") as store:
        _stored(store, photo)
        if over_another:
            _stored(store, target)
        photo.rename(target)
        plan = plan_folder(scope, store.known_paths(str(root)), settle=5, now=time.time())
        assert plan.deleted == [str(photo)] and len(plan.changed if over_another else plan.new) == 1
        applied = apply(plan, store, NoServer(), 32)
        assert applied.sent == 0 and applied.dropped == (1 if over_another else 0)  # the overwritten content only
        assert store.known_paths(str(root)) == {str(target): sha256_of(target)}
        assert store.count(RESNET) == 1 and store.get_many(RESNET, [sha256_of(target)])


def test_a_file_that_vanishes_before_it_is_sent_fails_alone(tmp_path: Path, monkeypatch) -> None:
    files = [aged(tmp_path / f"{i}.jpg", bytes([i])) for i in range(5)]
    files[3].unlink()
    client = EmbeddingClient("http://127.0.0.1:9", "m", None, "test")
    sent: list[list[str]] = []

    class Answer:
        status_code, content = 200, b"[]"

        def __init__(self, names: list[str]) -> None:
            self.names = names

        def json(self) -> list[dict]:
            return [{"file": n, "embedding": [1.0]} for n in self.names]

    def post(body: bytes) -> Answer:
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            sent.append(tar.getnames())
        return Answer(sent[-1])

    monkeypatch.setattr(client, "_post_with_retries", post)
    results = client._send([Upload(f.name, f) for f in files])
    assert [r.name for r in results] == [f.name for f in files]
    assert results[3].error["code"] == "unreadable" and all(r.error is None for i, r in enumerate(results) if i != 3)
    assert sorted(n for names in sent for n in names) == ["0.jpg", "1.jpg", "2.jpg", "4.jpg"]


# --- watching: inotify, and polling where it cannot ------------------------------------------------


def test_inotify_reports_a_new_file_and_watches_every_folder(tmp_path: Path) -> None:
    for sub in ("a/b", "c"):
        (tmp_path / sub).mkdir(parents=True)
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer, how = start_observer(tmp_path, PathEvents(lambda path, is_dir: seen.put(path)), recursive=True)
    try:
        assert how == "inotify"
        assert unwatched_folders(observer, tmp_path, True) == 0
        (tmp_path / "a" / "b" / "new.jpg").write_bytes(b"x")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if seen.get(timeout=max(0.01, deadline - time.monotonic())) == str(tmp_path / "a" / "b" / "new.jpg"):
                break
        else:
            pytest.fail("no event for the new file")
    finally:
        stop_observer(observer)


@pytest.mark.parametrize("err, limit", [(errno.ENOSPC, "fs.inotify.max_user_watches"),
                                        (errno.EMFILE, "fs.inotify.max_user_instances"),
                                        (errno.ENOSYS, "no inotify")])  # fmt: skip
def test_inotify_that_cannot_start_falls_back_to_polling_and_says_what_to_raise(
    tmp_path: Path, caplog, err: int, limit: str
) -> None:
    class Exhausted:
        def schedule(self, *args, **kwargs) -> None:
            pass

        def start(self) -> None:
            raise OSError(err, os.strerror(err))

    with caplog.at_level(logging.WARNING, logger="client.watch"):
        observer, how = start_observer(tmp_path, PathEvents(lambda *a: None), recursive=True, inotify=Exhausted)
    stop_observer(observer)
    assert type(observer).__name__ == "PollingObserver" and how == "polling every 10 s"
    [record] = caplog.records
    assert limit in record.message and "--poll" in record.message and f"cannot watch {tmp_path}" in record.message


def test_inotify_that_skips_subfolders_falls_back_to_polling(tmp_path: Path, caplog, monkeypatch) -> None:
    # watchdog raises only for the top folder; a subfolder over the watch limit is skipped without a word
    monkeypatch.setattr("client.watch.unwatched_folders", lambda observer, root, recursive: 3)
    with caplog.at_level(logging.WARNING, logger="client.watch"):
        observer, how = start_observer(tmp_path, PathEvents(lambda *a: None), recursive=True, poll=None)
    stop_observer(observer)
    assert how.startswith("polling")
    assert "3 of its folders" in caplog.text and "fs.inotify.max_user_watches" in caplog.text


def test_polling_when_asked_reports_a_deleted_file(tmp_path: Path) -> None:
    photo = aged(tmp_path / "a.jpg")
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer, how = start_observer(tmp_path, PathEvents(lambda path, is_dir: seen.put(path)), True, poll=0.2)
    try:
        assert how == "polling every 0.2 s"
        photo.unlink()
        assert seen.get(timeout=10) == str(photo)
    finally:
        stop_observer(observer)


def test_json_summary_is_one_record(tmp_path: Path, capsys) -> None:
    from client.commands.index import main

    aged(tmp_path / "notes.txt", b"no images here")
    assert main([str(tmp_path), "--store", str(tmp_path / "s.sqlite"), "--format", "json", "--quiet"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["folder"] == str(tmp_path.resolve()) and record["new"] == 0 and record["sent"] == 0
