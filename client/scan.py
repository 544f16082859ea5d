"""Finding the images in a folder and naming their content (sha256 of the bytes)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tqdm import tqdm

if TYPE_CHECKING:
    from client.store import EmbeddingStore, StoredFileState

# Camera RAW: Adobe DNG, Canon, Nikon, Sony, Olympus, Panasonic/Leica, Fujifilm, Pentax, Samsung,
# Hasselblad, Epson, Kodak, Minolta, Sigma, Phase One, Leaf, Mamiya (the server reads them with LibRaw)
RAW_SUFFIXES = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".rwl", ".raf",
    ".pef", ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mrw", ".x3f", ".iiq", ".mos", ".mef",
})  # fmt: skip
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".heic", ".heif", ".hif", ".avif",  # phones' formats: HEIC (iPhone), AVIF
}) | RAW_SUFFIXES  # fmt: skip

# A file whose mtime is this close to the scan (or ahead of it) may be written again within the same
# mtime tick (FAT: 2 s) without its stat changing: its state is not remembered, so the next run reads it.
MTIME_GRANULARITY = 2.0  # seconds
STATE_BATCH = 500  # file states per store transaction: a killed scan keeps all but the last batch
STATE_LOOKUP = 10_000  # file states looked up at a time
PROGRESS_FROM = 1000  # files: fewer hash too fast to need a progress bar


@dataclass(frozen=True)
class ImageFile:
    path: Path
    name: str  # path relative to the folder: unique in a run, sent as the tar member name
    sha256: str
    size: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def candidate_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(image files, other files), sorted, hidden files and folders left out."""
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    images, others = [], []
    for path in sorted(pattern):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def describe(path: Path, folder: Path | None) -> ImageFile:
    return ImageFile(path, _name(path, folder), sha256_of(path), path.stat().st_size)


def scan(folder: Path, recursive: bool) -> Iterator[ImageFile]:
    images, _ = candidate_files(folder, recursive)
    for path in images:
        yield describe(path, folder)


@dataclass
class Scanned:
    """Files named by content, and how many had to be read (new or changed stat) vs were known unchanged."""

    files: list[ImageFile] = field(default_factory=list)
    read: int = 0
    unchanged: int = 0  # stat equal to the remembered state: not read

    def line(self) -> str:
        return f"{len(self.files)} files: {self.read} read, {self.unchanged} unchanged (stat only)"


def scan_files(
    paths: Sequence[Path], folder: Path | None, store: EmbeddingStore | None, *, rehash: bool = False,
    progress: bool = True, clock: Callable[[], float] = time.time,
) -> Scanned:  # fmt: skip
    """``describe`` for each of ``paths`` (absolute), reading only files whose (device, inode, size, mtime_ns)
    differ from the state ``store`` remembers (all of them with ``rehash`` or without a store).
    New states are remembered every STATE_BATCH files, so a killed scan keeps what it hashed."""
    done = Scanned()
    pending: list[StoredFileState] = []
    known: dict[str, StoredFileState] = {}
    bar = tqdm(paths, desc="hashing", unit="file", file=sys.stderr, disable=not progress or len(paths) < PROGRESS_FROM)
    for n, path in enumerate(bar):
        if n % STATE_LOOKUP == 0 and store is not None and not rehash:  # by slices: memory stays flat
            known = store.file_states(map(str, paths[n : n + STATE_LOOKUP]))
        before = path.stat()
        state = known.get(str(path))
        if state is not None and _same(state, before):
            sha = state["sha256"]
            done.unchanged += 1
        else:
            sha = sha256_of(path)
            done.read += 1
            after = path.stat()
            # written to while it was read, or within the mtime's granularity: read it again next time
            if store is not None and _same_stat(before, after) and clock() - after.st_mtime >= MTIME_GRANULARITY:
                pending.append(_state_of(str(path), after, sha))
        done.files.append(ImageFile(path, _name(path, folder), sha, before.st_size))
        if store is not None and len(pending) >= STATE_BATCH:
            store.remember_file_states(pending)
            pending = []
    if store is not None and pending:
        store.remember_file_states(pending)
    return done


def _name(path: Path, folder: Path | None) -> str:
    return path.relative_to(folder).as_posix() if folder and path.is_relative_to(folder) else path.name


def _same(state: StoredFileState, st: os.stat_result) -> bool:
    return (state["device"], state["inode"], state["size"], state["mtime_ns"]) == (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
    )  # fmt: skip


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _state_of(path: str, st: os.stat_result, sha: str) -> StoredFileState:
    return {"path": path, "device": st.st_dev, "inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha}  # fmt: skip
