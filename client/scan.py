"""Finding the images in a folder and naming their content (sha256 of the bytes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    name = path.relative_to(folder).as_posix() if folder and path.is_relative_to(folder) else path.name
    return ImageFile(path, name, sha256_of(path), path.stat().st_size)


def scan(folder: Path, recursive: bool) -> Iterator[ImageFile]:
    images, _ = candidate_files(folder, recursive)
    for path in images:
        yield describe(path, folder)
