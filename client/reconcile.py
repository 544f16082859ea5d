"""A folder against the store: which of its images are new, changed, deleted or unchanged since last indexed.

``index.py`` plans with ``plan_folder`` (a whole pass) or ``plan_paths`` (the paths a watch saw
settle or vanish), then ``apply`` brings the store in line: it forgets what is gone and embeds
what the store lacks (``client.embedding``: a content already stored is never sent again).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from client.embedding import embed_files
from client.scan import (
    IMAGE_SUFFIXES,
    MTIME_GRANULARITY,
    PROGRESS_FROM,
    STATE_BATCH,
    ImageFile,
    candidate_files,
    name_in,
    sha256_of,
)  # fmt: skip
from client.settle import FileState
from client.store import EmbeddingStore, StoredFileState
from client.torchserve_client import EmbeddingClient

# Files per embed_files call: the reused vectors of a large library never sit in RAM all at once,
# and 128 requests of 32 keep the server's pipeline full between calls.
CHUNK = 4096
HashCache = dict[str, tuple[FileState, str]]  # path -> (its state when hashed, sha256): a watch rehashes only changes


@dataclass(frozen=True)
class Scope:
    """What an index of ``root`` is responsible for: its images (all, or only those directly in it),
    never hidden ones, never the store's own files."""

    root: Path  # absolute and resolved: paths are recorded as str(root / relative)
    recursive: bool
    ignored: frozenset[str] = frozenset()

    @classmethod
    def of(cls, root: Path, recursive: bool, store_location: str) -> Scope:
        store = Path(store_location).expanduser()
        ignored = frozenset()
        if "://" not in store_location:
            store = store.resolve()
            ignored = frozenset(str(store) + suffix for suffix in ("", "-wal", "-shm", "-journal"))
        return cls(root.resolve(), recursive, ignored)

    def _parts(self, path: str) -> tuple[str, ...] | None:
        """``path``'s parts below the root, or None outside it (and for the root itself)."""
        base = str(self.root)
        if not path.startswith(base.rstrip("/") + "/"):
            return None
        parts = tuple(part for part in path[len(base) :].split("/") if part)
        return parts or None

    def covers(self, path: str) -> bool:
        """A path recorded in the store that this index keeps current (or forgets)."""
        parts = self._parts(path)
        return parts is not None and (self.recursive or len(parts) == 1)

    def wants(self, path: str, is_directory: bool) -> bool:
        """An event at ``path`` worth a look: an image, or a folder that may hold some."""
        parts = self._parts(path)
        if parts is None or path in self.ignored or any(part.startswith(".") for part in parts):
            return False
        if is_directory:
            return self.recursive
        return (self.recursive or len(parts) == 1) and os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


@dataclass
class Plan:
    new: list[ImageFile] = field(default_factory=list)  # a path the store has not seen
    changed: list[ImageFile] = field(default_factory=list)  # a known path with other bytes now
    unchanged: list[ImageFile] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # known paths with no image there any more
    changing: list[str] = field(default_factory=list)  # written within the settle time: left for later
    unreadable: list[str] = field(default_factory=list)  # could not be read: left as they were
    previous: dict[str, str] = field(default_factory=dict)  # changed and deleted paths -> the sha256 they had
    states: dict[str, StoredFileState] = field(default_factory=dict)  # path -> its state, of files hashed now
    read: int = 0  # files hashed: new, or their stat changed
    stat_only: int = 0  # files whose stat matched what was remembered: not read

    def scan_line(self) -> str:
        return f"{self.read + self.stat_only} files: {self.read} read, {self.stat_only} unchanged (stat only)"

    @property
    def files(self) -> list[ImageFile]:
        return self.new + self.changed + self.unchanged


@dataclass
class Applied:
    sent: int = 0  # images sent to the server
    reused: int = 0  # contents whose vectors the store had
    failed: int = 0  # files the server could not embed (warned about)
    dropped: int = 0  # contents forgotten with their vectors (at no known path any more)


def plan_folder(
    scope: Scope, known: Mapping[str, str], *, settle: float, now: float, hashes: HashCache | None = None,
    progress: bool = False, store: EmbeddingStore | None = None, rehash: bool = False,
) -> Plan:  # fmt: skip
    """Every image in the scope, hashed (unless ``hashes`` or the file states ``store`` remembers know it
    unchanged; every one with ``rehash``) and compared with ``known`` (path -> sha256, from
    ``store.known_paths``). A file whose mtime is within ``settle`` seconds of ``now`` (wall-clock) may still
    be being written: it is left for a later pass, and so is its old record. New file states go to ``store``
    in batches as they are hashed, so a stopped pass keeps them."""
    images, _ = candidate_files(scope.root, scope.recursive)
    hashes = {} if hashes is None else hashes
    if rehash:
        hashes.clear()
    elif store is not None:
        for key, st in store.file_states(images).items():
            hashes.setdefault(key, (FileState(st["size"], st["mtime_ns"], (st["device"], st["inode"])), st["sha256"]))
    plan = Plan()
    seen: set[str] = set()
    fresh: list[StoredFileState] = []
    quiet = not progress or len(images) < PROGRESS_FROM
    bar = tqdm(images, desc="hashing", unit="file", file=sys.stderr, disable=quiet)
    for key in bar:
        if key in scope.ignored:
            continue
        if _classify(key, scope, known, plan, hashes, settle=settle, now=now, fresh=fresh):
            seen.add(key)
        if store is not None and len(fresh) >= STATE_BATCH:
            store.remember_file_states(fresh)
            fresh = []
    if store is not None and fresh:
        store.remember_file_states(fresh)
    plan.deleted = [path for path in known if scope.covers(path) and path not in seen]
    plan.previous.update((path, known[path]) for path in plan.deleted)
    return plan


def plan_paths(
    scope: Scope, ready: Iterable[str], gone: Iterable[str], known: Mapping[str, str], hashes: HashCache | None = None
) -> Plan:
    """The same comparison for the paths a watch saw settle (``ready``) or vanish (``gone``: a file, or a
    folder with everything known below it)."""
    plan = Plan()
    vanished = list(gone)
    for key in ready:
        if not _classify(key, scope, known, plan, hashes, settle=0, now=0):
            vanished.append(key)
    deleted: dict[str, None] = {}
    for key in vanished:
        below = key.rstrip("/") + "/"
        deleted.update((p, None) for p in known if (p == key or p.startswith(below)) and scope.covers(p))
    plan.deleted = list(deleted)
    plan.previous.update((path, known[path]) for path in plan.deleted)
    return plan


def _classify(
    key: str, scope: Scope, known: Mapping[str, str], plan: Plan, hashes: HashCache | None, *, settle: float,
    now: float, fresh: list[StoredFileState] | None = None,
) -> bool:  # fmt: skip
    """Files the file at ``key`` in ``plan``; False when nothing is there any more. A file hashed here goes
    into ``fresh`` (file states to remember) unless its mtime is too close to ``now`` to be trusted next time."""
    try:
        before = os.stat(key)
        state = FileState.of(before)
        if settle and abs(now - before.st_mtime) < settle:
            plan.changing.append(key)
            return True
        cached = hashes.get(key) if hashes is not None else None
        if cached and cached[0] == state:
            sha = cached[1]
            plan.stat_only += 1
        else:
            sha = sha256_of(key)
            plan.read += 1
            if FileState.of(os.stat(key)) != state:  # written to while it was read: the hash is of neither version
                plan.changing.append(key)
                return True
            if hashes is not None:
                hashes[key] = (state, sha)
            if fresh is not None and now - before.st_mtime >= MTIME_GRANULARITY:
                plan.states[key] = StoredFileState(path=key, device=state.inode[0], inode=state.inode[1],
                                                   size=state.size, mtime_ns=state.mtime_ns, sha256=sha)  # fmt: skip
                fresh.append(plan.states[key])
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        tqdm.write(f"warning: {key}: cannot read it ({exc.strerror or exc}); left as it was", file=sys.stderr)
        plan.unreadable.append(key)
        return True
    image = ImageFile(key, name_in(key, scope.root), sha, state.size)
    old = known.get(key)
    (plan.new if old is None else plan.unchanged if old == sha else plan.changed).append(image)
    if old is not None and old != sha:
        plan.previous[key] = old
    return True


def apply(
    plan: Plan, store: EmbeddingStore, client: EmbeddingClient, batch_size: int, progress: bool = False,
    retry_failed: bool = False,
) -> Applied:
    """Brings the store in line with ``plan``. What is gone is forgotten before anything is sent, so a server
    that is down delays only the new contents; a content that only moved (renamed, or renamed over another
    file) is recorded at its new path first, so it keeps its vectors. Each batch is committed as it comes back."""
    done = Applied()
    moved = set(plan.previous.values())
    _remember(store, [f for f in plan.new if f.sha256 in moved])
    if plan.changed:
        done.dropped += store.forget_paths(f.path for f in plan.changed)  # the old bytes at those paths
        _remember(store, [f for f in plan.changed if f.sha256 in moved])
        # forget_paths dropped their file states too: those of the new bytes stay
        store.remember_file_states([plan.states[f.path] for f in plan.changed if f.path in plan.states])
    done.dropped += store.forget_paths(plan.deleted)
    files = plan.files
    identity = None
    for i in range(0, len(files), CHUNK):
        chunk = files[i : i + CHUNK]
        embedded = embed_files(chunk, client, store, batch_size, progress=progress, retry_failed=retry_failed)
        done.sent += embedded.sent
        done.reused += embedded.reused
        done.failed += sum(f.sha256 in embedded.errors for f in chunk)
        identity = embedded.identity or identity
    if identity is None and client is not None and done.dropped:
        identity = store.endpoint(client.url, client.model)
    if identity is not None and (done.sent or done.dropped):
        store.prepare_search(identity)  # a large store's snapshot is rewritten here, not in the next search
    return done


def _remember(store: EmbeddingStore, files: list[ImageFile]) -> None:
    paths: dict[str, list[str]] = {}
    for f in files:
        paths.setdefault(f.sha256, []).append(f.path)
    if paths:
        store.remember_paths(paths)
