"""Perceptual hashes (pHash) of image files, and of their mirror images, for free.

The 64-bit pHash is the sign pattern of the 8x8 lowest frequencies of the DCT of a
32x32 greyscale thumbnail (the same bits as ``imagehash.phash``, without its SciPy
and PyWavelets dependencies). It survives rescaling, re-encoding, brightness and
colour changes, not crops or rotations. Mirroring the thumbnail only flips the sign
of the odd horizontal frequencies, so the mirror image's hash costs nothing extra
and ``distance`` can ignore horizontal flips.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from client.image_files import open_image

HASH_SIDE = 8  # 8x8 = 64 bits
THUMB_SIDE = 32  # imagehash's highfreq_factor 4
# JPEGs are decoded at 1/2..1/8 scale while the short side stays at least this: ample for a
# 32-pixel thumbnail, and several times faster than a full decode of a camera photo.
DRAFT_SIDE = 256


class PHash(NamedTuple):
    bits: int  # the image's hash, row-major from the DC coefficient, most significant bit first
    mirrored: int  # the hash of its left-right mirror image


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Unnormalised DCT-II (SciPy's default): y[k] = 2 * sum x[i] cos(pi k (2i + 1) / 2n)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def _bits(low: np.ndarray) -> int:
    flags = (low > np.median(low)).ravel()
    return int("".join("1" if f else "0" for f in flags), 2)


def phash_image(image: Image.Image) -> PHash:
    grey = np.asarray(image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(THUMB_SIDE)
    low = (dct @ grey @ dct.T)[:HASH_SIDE, :HASH_SIDE]
    odd_columns = np.where(np.arange(HASH_SIDE) % 2 == 1, -1.0, 1.0)
    return PHash(_bits(low), _bits(low * odd_columns))


def phash_file(path: str | Path) -> PHash | None:
    """The pHash of an image file shown upright (EXIF orientation applied); None if it cannot be read."""
    try:
        return phash_image(open_image(path, "L", DRAFT_SIDE))
    except Exception:  # unreadable, truncated, not an image: the caller falls back to cosine alone
        return None


def distance(a: PHash, b: PHash) -> int:
    """Differing bits (0-64) between two images, the smaller of as-is and with one of them mirrored."""
    return min((a.bits ^ b.bits).bit_count(), (a.bits ^ b.mirrored).bit_count())
