"""Every pair of vectors above a cosine, found blockwise: memory grows with N x dim, never N x N."""

from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

# Scores of one block: rows x N float32 cells. 2**26 cells = 256 MiB, whatever N is.
BLOCK_CELLS = 1 << 26
MAX_LINKS_PER_ROW = 64  # bounds memory on a collection of thousands of copies of one picture
PROGRESS_FROM = 20_000  # rows: fewer are grouped in a second or two, too fast to need a progress bar


def progress_bar(total: int, unit: str, shown: bool) -> tqdm:
    """The grouping step's bar on stderr, with its rate and ETA (the pair searches' shared look)."""
    return tqdm(total=total, desc="grouping", unit=unit, file=sys.stderr, disable=not shown, mininterval=1.0)


def unit_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32; ``out=vectors`` works in place."""
    unit = np.asarray(vectors, dtype=np.float32) if out is None else out
    # by slices: a whole-matrix norm squares a copy of every row first (twice the vectors' bytes at peak)
    norms = np.concatenate([np.linalg.norm(unit[i : i + 65536], axis=1) for i in range(0, len(unit), 65536)]
                           or [np.empty(0, np.float32)])  # fmt: skip
    np.divide(1.0, norms, out=norms, where=norms > 0)
    if out is None:
        return unit * norms[:, None]
    unit *= norms[:, None]
    return unit


def cosine_pairs(
    unit: np.ndarray, threshold: float, *, max_per_row: int = MAX_LINKS_PER_ROW, block_cells: int = BLOCK_CELLS,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Every pair i < j of unit rows with cosine >= threshold, as arrays (i, j, cosine).

    Each row keeps at most ``max_per_row`` partners after it (its best ones); a group of
    many copies stays connected through them. Exact: no approximation, no N x N matrix.
    """
    n = len(unit)
    found_i, found_j, found_s = [], [], []
    rows = max(1, min(n, block_cells // max(n, 1)))
    bar = progress_bar(n * (n - 1) // 2, "pair", progress and n >= PROGRESS_FROM)  # pairs: blocks shrink as they go
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        bar.update((stop - start) * (n - start) - (stop - start) * (stop - start + 1) // 2)
        scores = unit[start:stop] @ unit[start:].T  # the block against itself and every later row
        scores[:, : stop - start][np.tri(stop - start, dtype=bool)] = -np.inf  # keep j > i only
        r, c = np.nonzero(scores >= threshold)
        if not len(r):
            continue
        s = scores[r, c]
        counts = np.bincount(r, minlength=stop - start)
        if counts.max() > max_per_row:
            order = np.lexsort((-s, r))  # by row, best first within a row
            r, c, s = r[order], c[order], s[order]
            rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
            keep = rank < max_per_row
            r, c, s = r[keep], c[keep], s[keep]
        found_i.append(r + start)
        found_j.append(c + start)
        found_s.append(s)
    bar.close()
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
