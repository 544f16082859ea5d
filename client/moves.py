"""Moving duplicates out of the way, and back: a manifest first, every file checked, nothing ever deleted.

- ``plan_moves`` gives each file to go its place under the destination, mirroring its path
  inside the folder; a name already taken gets a `` (2)`` suffix, never an overwrite.
- ``move_files`` appends the plan to ``DIR/imgsim-moves.csv`` and fsyncs it before the first
  move, then moves each file that still has the size, mtime and sha256 it had when scanned.
  A move is a hard link then an unlink (the file is never without a name, and an existing
  name is never replaced); across filesystems it is a copy, fsynced, hashed again, and only
  then is the original removed.
- ``undo`` moves back each file whose new path still holds the recorded sha256 and whose
  original path is free; it can run again, and appends what it did to the manifest.
- ``trash_files`` sends the files to the desktop trash (send2trash) after the same checks,
  with the same kind of record written first.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from client.duplicates.plan import Step
from client.scan import MANIFEST_NAME, sha256_of

TRASH_RECORD_NAME = ".imgsim-trashed.csv"  # in the folder: hidden, so a scan leaves it out
COLUMNS = [
    "run", "time", "action", "status", "original_path", "new_path", "sha256", "size", "group", "tier",
    "kept_path", "why_kept", "note",
]  # fmt: skip
TRASH = "(desktop trash)"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Move:
    """One file to go: from ``source`` to ``target`` (None: to the trash), if it is still as scanned."""

    source: Path
    target: Path | None
    sha256: str
    size: int
    mtime_ns: int | None  # None: not checked (undo: a copy across filesystems may round the mtime)
    group: int = 0
    tier: str = ""
    kept: str = ""
    why: str = ""
    note: str = ""  # e.g. the name was taken, so the target has a suffix


@dataclass(frozen=True)
class Outcome:
    move: Move
    status: str  # moved, trashed, restored, already back, would move, ..., skipped
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.status != "skipped"


def plan_moves(steps: Sequence[Step], folder: Path, dest: Path | None) -> list[Move]:
    """A Move per step that goes; ``dest`` None means the trash. Nothing is touched."""
    folder, taken = Path(os.path.abspath(folder)), set[Path]()
    out_dir = Path(os.path.abspath(dest)) if dest is not None else None
    kept_paths = {s.group: str(folder / s.kept) for s in steps if s.action == "keep"}
    moves = []
    for s in steps:
        if s.action != "go":
            continue
        target, note = None, ""
        if out_dir is not None:
            target = _free_name(out_dir / s.relative, taken)
            taken.add(target)
            if target != out_dir / s.relative:
                note = f"{out_dir / s.relative} exists: moved to {target.name}"
        moves.append(Move(Path(os.path.abspath(s.path)), target, s.sha256, s.size, s.mtime_ns, s.group, s.tier,
                          kept_paths.get(s.group, ""), s.why, note))  # fmt: skip
    return moves


def _free_name(wanted: Path, taken: set[Path]) -> Path:
    """``wanted``, or ``name (2).ext``, ``name (3).ext``...: the first that is neither on disk nor planned."""
    candidate, n = wanted, 1
    while candidate in taken or os.path.lexists(candidate):
        n += 1
        candidate = wanted.with_name(f"{wanted.stem} ({n}){wanted.suffix}")
    return candidate


# --- the manifest ---------------------------------------------------------------------------------


class Manifest:
    """An append-only CSV log of moves: every run adds rows, none are rewritten."""

    def __init__(self, path: Path, run: str | None = None):
        self.path = path
        self.run = run or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header != COLUMNS:
                raise ValueError(f"{path} is not a manifest this version wrote (columns {header}); "
                                 "pick another folder to move into")  # fmt: skip

    def append(self, rows: Iterable[tuple[str, str, Move, str]]) -> None:
        """Appends (action, status, move, note) rows and makes them durable (fsync) before returning."""
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(COLUMNS)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for action, status, m, note in rows:
                writer.writerow([
                    self.run, now, action, status, m.source, m.target or TRASH, m.sha256, m.size, m.group, m.tier,
                    m.kept, m.why, note or m.note,
                ])  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path.parent)

    def moves(self) -> list[Move]:
        """The planned moves of every run, newest first (the order to undo them in)."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["action"] == "move" and r["status"] == "planned"]
        out = [
            Move(Path(r["original_path"]), Path(r["new_path"]), r["sha256"], int(r["size"]), None, int(r["group"]),
                 r["tier"], r["kept_path"], r["why_kept"])
            for r in rows
        ]  # fmt: skip
        return out[::-1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the file itself was synced
        pass
    finally:
        os.close(fd)


# --- one file -------------------------------------------------------------------------------------


def _still_as_planned(m: Move, since: str = "scanned") -> str | None:
    """None when ``m.source`` is the regular file planned (size, mtime, sha256), else why not."""
    try:
        st = os.lstat(m.source)
    except FileNotFoundError:
        return f"gone since it was {since}"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_size != m.size or (m.mtime_ns is not None and st.st_mtime_ns != m.mtime_ns):
        return f"changed since it was {since} (size or date)"
    try:
        if sha256_of(m.source) != m.sha256:
            return f"changed since it was {since} (content)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    return None


def move_one(m: Move, since: str = "scanned") -> str | None:
    """Moves ``m.source`` to ``m.target`` if it is still as planned and the target is free; None, or why not."""
    assert m.target is not None
    problem = _still_as_planned(m, since)
    if problem:
        return problem
    if os.path.lexists(m.target):
        return f"{m.target} exists (never overwritten)"
    try:
        m.target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make the folder {m.target.parent}: {exc.strerror or exc}"
    try:
        os.link(m.source, m.target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return f"{m.target} exists (never overwritten)"
        if exc.errno == errno.EXDEV:
            return _copy_verify_remove(m)
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            return _rename(m)  # a filesystem without hard links (FAT, some network ones)
        return f"could not move: {exc.strerror}"
    os.unlink(m.source)  # the content has its new name already
    return None


def _rename(m: Move) -> str | None:
    assert m.target is not None
    if os.path.lexists(m.target):
        return f"{m.target} exists (never overwritten)"
    try:
        os.rename(m.source, m.target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return _copy_verify_remove(m)
        return f"could not move: {exc.strerror}"
    return None


def _copy_verify_remove(m: Move) -> str | None:
    """Another filesystem: copy (exclusive create, fsync), check both hashes, keep the dates, then remove the source."""
    assert m.target is not None
    try:
        before = os.lstat(m.source)
        fd = os.open(m.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(before.st_mode))
    except FileExistsError:
        return f"{m.target} exists (never overwritten)"
    except OSError as exc:
        return f"could not copy to {m.target}: {exc.strerror}"
    problem = None
    try:
        read = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst, open(m.source, "rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                read.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if read.hexdigest() != m.sha256:
            problem = "changed while it was being copied"
        elif sha256_of(m.target) != m.sha256:
            problem = f"the copy at {m.target} did not verify (its sha256 differs)"
        else:
            after = os.lstat(m.source)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                problem = "changed while it was being copied"
    except OSError as exc:
        problem = f"could not copy to {m.target}: {exc.strerror}"
    if problem:
        _remove_own_copy(m.target)
        return problem
    shutil.copystat(m.source, m.target)  # mode, dates (to the nanosecond), flags, as the original has them
    _fsync_dir(m.target.parent)
    os.unlink(m.source)  # the verified copy holds the same bytes
    return None


def _remove_own_copy(path: Path) -> None:
    """Removes a copy this module made and could not verify (the original is untouched)."""
    try:
        os.unlink(path)
    except OSError:
        pass


# --- whole plans ----------------------------------------------------------------------------------


def move_files(moves: Sequence[Move], dest: Path) -> tuple[list[Outcome], Path]:
    """Writes the plan into ``dest``'s manifest (fsynced), then moves each file; the outcomes and the manifest."""
    manifest = Manifest(Path(dest) / MANIFEST_NAME)
    if not moves:
        return [], manifest.path
    manifest.append(("move", "planned", m, "") for m in moves)
    outcomes = []
    for m in moves:
        problem = move_one(m)
        outcomes.append(Outcome(m, "skipped", problem) if problem else Outcome(m, "moved"))
    manifest.append(("move", o.status, o.move, o.reason) for o in outcomes)
    return outcomes, manifest.path


def trash_files(moves: Sequence[Move], record: Path) -> list[Outcome]:
    """Records the plan in ``record`` (fsynced), then sends each file still as scanned to the desktop trash."""
    from send2trash import send2trash  # only this action needs it

    manifest = Manifest(record)
    if not moves:
        return []
    manifest.append(("trash", "planned", m, "") for m in moves)
    outcomes = []
    for m in moves:
        problem = _still_as_planned(m)
        if not problem:
            try:
                send2trash(os.fspath(m.source))
            except Exception as exc:  # send2trash raises its own TrashPermissionError and OSErrors
                problem = f"could not be trashed: {exc}"
        outcomes.append(Outcome(m, "skipped", problem) if problem else Outcome(m, "trashed"))
    manifest.append(("trash", o.status, o.move, o.reason) for o in outcomes)
    return outcomes


def undo(dest: Path, dry_run: bool = False) -> tuple[list[Outcome], Path]:
    """Moves back every file the manifest in ``dest`` moved there, newest run first; safe to run again."""
    manifest = Manifest(Path(dest) / MANIFEST_NAME)
    if not manifest.path.exists():
        raise FileNotFoundError(f"{manifest.path} does not exist: is {dest} the folder given to --move-to?")
    outcomes, seen = [], set()
    for planned in manifest.moves():
        if (planned.source, planned.target) in seen:
            continue  # the same move planned by two runs: the newest one answers
        seen.add((planned.source, planned.target))
        outcomes.append(_undo_one(planned, dry_run))
    if not dry_run and outcomes:
        manifest.append(("undo", o.status, o.move, o.reason) for o in outcomes)
        top = Path(os.path.abspath(dest))
        for o in outcomes:
            if o.status == "restored" and o.move.target is not None:
                _remove_empty_parents(o.move.target.parent, top)
    return outcomes, manifest.path


def _undo_one(planned: Move, dry_run: bool) -> Outcome:
    """Moves ``planned.target`` back to ``planned.source``; the outcome names the move as it was planned."""
    assert planned.target is not None
    back = replace(planned, source=planned.target, target=planned.source, note="")
    if not os.path.lexists(back.source):
        if os.path.isfile(back.target) and sha256_of(back.target) == back.sha256:
            return Outcome(planned, "in place")  # undone before, or never moved
        return Outcome(planned, "skipped", f"{back.source} is gone and {back.target} does not hold the file")
    if os.path.lexists(back.target):
        return Outcome(planned, "skipped", f"{back.target} is taken by another file (never overwritten)")
    if dry_run:
        problem = _still_as_planned(back, "moved")
        return Outcome(planned, "skipped", problem) if problem else Outcome(planned, "would restore")
    problem = move_one(back, "moved")
    return Outcome(planned, "skipped", problem) if problem else Outcome(planned, "restored")


def _remove_empty_parents(folder: Path, top: Path) -> None:
    """Removes the folders an undo emptied, up to (not including) ``top``; rmdir refuses any that holds a file."""
    folder = Path(os.path.abspath(folder))
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
