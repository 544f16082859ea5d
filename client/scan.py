"""Finding the images in a folder and naming their content (sha256 of the bytes)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
# The manifest dedup.py writes first into a folder it moves duplicates to (client.moves): a folder
# holding one is left out of later scans, so the moved copies are not found again.
MANIFEST_NAME = "imgsim-moves.csv"
STATE_BATCH = 500  # file states per store transaction: a killed scan keeps all but the last batch
STATE_LOOKUP = 10_000  # file states looked up at a time
PROGRESS_FROM = 1000  # files: fewer hash too fast to need a progress bar


@dataclass(frozen=True, slots=True)
class ImageFile:
    path: str  # as the folder walk gave it: a string, not a Path (a million Paths cost ~400 MB more)
    name: str  # path relative to the folder: unique in a run, sent as the tar member name
    sha256: str
    size: int


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def candidate_files(folder: str | os.PathLike, recursive: bool) -> tuple[list[str], list[str]]:
    """(image files, other files) below ``folder`` as path strings, hidden files and folders left out, in
    the order of their parts: each folder's entries by name, a subfolder's files where its name sorts.
    Symbolic links to files count; links to folders are not followed. A folder that cannot be read is
    named in a warning and left out."""
    images: list[str] = []
    others: list[str] = []
    _walk(os.fspath(folder), recursive, images, others)
    return images, others


def _walk(folder: str, recursive: bool, images: list[str], others: list[str]) -> None:
    try:
        with os.scandir(folder) as found:
            entries = sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        reason = exc.strerror or exc
        tqdm.write(f"warning: {folder}: cannot list it ({reason}); its images are left out", file=sys.stderr)
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    _walk(entry.path, recursive, images, others)
            elif entry.is_file():
                (images if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES else others).append(entry.path)
        except OSError:  # gone since it was listed
            continue


def outside_move_folders(images: list[str], others: list[str], dest: str | os.PathLike | None = None
                         ) -> tuple[list[str], int]:  # fmt: skip
    """``images`` (from ``candidate_files``) outside every folder that duplicates were moved into (its
    ``others`` hold a manifest, or it is ``dest``), and how many were left out."""
    held = {os.path.dirname(p) + "/" for p in others if os.path.basename(p) == MANIFEST_NAME}
    if dest is not None:
        held.add(os.path.realpath(dest).rstrip("/") + "/")
    if not held:
        return images, 0
    kept = [p for p in images if not any(p.startswith(h) for h in held)]
    return kept, len(images) - len(kept)


def held_note(held: int) -> str:
    return f"; left out {held} files in folders that duplicates were moved into" if held else ""


def describe(path: str | os.PathLike, folder: str | os.PathLike | None) -> ImageFile:
    path = os.fspath(path)
    return ImageFile(path, name_in(path, folder), sha256_of(path), os.stat(path).st_size)


@dataclass
class Scanned:
    """Files named by content, and how many had to be read (new or changed stat) vs were known unchanged."""

    files: list[ImageFile] = field(default_factory=list)
    read: int = 0
    unchanged: int = 0  # stat equal to the remembered state: not read

    def line(self) -> str:
        return f"{len(self.files)} files: {self.read} read, {self.unchanged} unchanged (stat only)"


def scan_files(
    paths: Sequence[str | os.PathLike], folder: str | os.PathLike | None, store: EmbeddingStore | None, *,
    rehash: bool = False, progress: bool = True, clock: Callable[[], float] = time.time,
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
            known = store.file_states(map(os.fspath, paths[n : n + STATE_LOOKUP]))
        path = os.fspath(path)
        before = os.stat(path)
        state = known.get(path)
        if state is not None and _same(state, before):
            sha = state["sha256"]
            done.unchanged += 1
        else:
            sha = sha256_of(path)
            done.read += 1
            after = os.stat(path)
            # written to while it was read, or within the mtime's granularity: read it again next time
            if store is not None and _same_stat(before, after) and clock() - after.st_mtime >= MTIME_GRANULARITY:
                pending.append(_state_of(path, after, sha))
        done.files.append(ImageFile(path, name_in(path, folder), sha, before.st_size))
        if store is not None and len(pending) >= STATE_BATCH:
            store.remember_file_states(pending)
            pending = []
    if store is not None and pending:
        store.remember_file_states(pending)
    return done


def name_in(path: str, folder: str | os.PathLike | None) -> str:
    """``path`` relative to ``folder`` when it is below it (both absolute or both relative), else its file name."""
    if folder is not None:
        base = os.fspath(folder).rstrip("/") + "/"
        if path.startswith(base):
            return path[len(base) :]
    return os.path.basename(path)


def _same(state: StoredFileState, st: os.stat_result) -> bool:
    return (state["device"], state["inode"], state["size"], state["mtime_ns"]) == (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
    )  # fmt: skip


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _state_of(path: str, st: os.stat_result, sha: str) -> StoredFileState:
    return {"path": path, "device": st.st_dev, "inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha}  # fmt: skip
