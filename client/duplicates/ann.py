"""Candidate pairs from an approximate nearest-neighbour index (faiss k-means cells), every one scored exactly.

The exact scan (``pairs.cosine_pairs``) costs O(N^2): 100,000 vectors take minutes, a
million hours. Here the rows are put into k-means cells (an inverted file, as faiss's
IVF indexes do), and each row is compared only with the rows of its ``nprobe`` nearest
cells, as one float32 matmul per cell. Every score is the exact cosine of the two unit
rows, so a pair this returns is one the exact scan returns too (no false pairs); what
the cells can do is miss a pair (recall below 1), measured by bench/ann_pairs.py.

The index is derived data: built from the vectors in memory on every run and never
written anywhere, so it cannot be stale and holds nothing the store does not. Building
it (a PCA and a k-means on a sample, then one cell per row) is a small part of the
search, so persisting it would save little and cost a staleness check.
"""

from __future__ import annotations

import numpy as np

from client.duplicates.pairs import BLOCK_CELLS, MAX_LINKS_PER_ROW, cosine_pairs, progress_bar

SEARCHES = ("auto", "exact", "ann")
# Below this many vectors the exact scan is used: it is seconds there and needs no index.
# Crossover measured by: .venv/bin/python bench/ann_pairs.py --crossover (docs/DEDUP.md).
ANN_FROM = 20_000
# Cells searched per row, k-means settings: chosen by bench/ann_pairs.py (recall >= 0.99 at 100,000).
NPROBE = 16
SAMPLE_PER_CELL = 40
KMEANS_ITERATIONS = 10
COARSE_DIM = 128


def ann_candidate_pairs(
    unit: np.ndarray, threshold: float, *, max_per_row: int = MAX_LINKS_PER_ROW, nlist: int | None = None,
    nprobe: int = NPROBE, chunk_rows: int = 16384, seed: int = 0, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Pairs i < j of unit rows with cosine >= threshold, found cell by cell: arrays (i, j, cosine), sorted by i.

    The same contract as ``pairs.cosine_pairs`` (each row keeps its best ``max_per_row``
    partners after it) but approximate in recall: rows are put into ``nlist`` k-means
    cells (faiss), and a pair is looked at when one row's cell is among the other's
    ``nprobe`` nearest cells. Each cell is scored as one float32 matmul of the rows that
    probe it against the rows in it, so every score is the exact cosine and a pair
    returned is one the exact scan returns too. ``unit`` (float32, rows of length 1 or
    0) is read, never copied whole; memory beyond it is the pairs, one cell's rows and
    at most 256 MiB of their scores.
    """
    try:
        import faiss  # only here: the exact path never needs it
    except ImportError as exc:
        raise ImportError(f"the ANN search needs faiss ({exc}): pip install -r requirements.txt, "
                          f"or search exactly (dedup.py --search exact)") from exc  # fmt: skip

    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n, dim = unit.shape
    if n < 2:
        return _empty()
    nlist = nlist or default_nlist(n)
    nprobe = min(nlist, nprobe)
    rng = np.random.default_rng(seed)
    sample = unit[np.sort(rng.choice(n, size=min(n, SAMPLE_PER_CELL * nlist), replace=False))]
    # Cells are cut in a centred, reduced space (PCA): embeddings share a large common
    # direction, and assigning a million rows to thousands of cells in 1280-d would cost
    # as much as the search. Cells only steer the search (every pair is scored exactly),
    # so a rough k-means is enough.
    pca = faiss.PCAMatrix(dim, min(dim, COARSE_DIM))
    pca.train(sample)
    sample = pca.apply(sample)
    kmeans = faiss.Kmeans(sample.shape[1], nlist, niter=KMEANS_ITERATIONS, spherical=True, seed=seed,
                          verbose=False, max_points_per_centroid=SAMPLE_PER_CELL)  # fmt: skip
    kmeans.train(sample)
    del sample
    cells = faiss.IndexFlatIP(kmeans.centroids.shape[1])
    cells.add(kmeans.centroids)
    probes = np.empty((n, nprobe), dtype=np.int64)
    for start in range(0, n, chunk_rows):
        probes[start : start + chunk_rows] = cells.search(pca.apply(unit[start : start + chunk_rows]), nprobe)[1]
    home = probes[:, 0]  # each row lives in its nearest cell and is looked for in its nprobe nearest
    members = _rows_by_cell(home, nlist)
    askers = _rows_by_cell(probes.ravel(), nlist, per_row=nprobe)
    found_i, found_j, found_s = [], [], []
    bar = progress_bar(n * nprobe, "probe", progress)  # a probe: one row looked for in one cell
    for cell in range(nlist):
        inside, asking = members[cell], askers[cell]
        bar.update(len(asking))
        if not len(inside) or not len(asking):
            continue
        step = max(1, min(chunk_rows, BLOCK_CELLS // len(inside)))  # scores of one step: 256 MiB at most
        for start in range(0, len(asking), step):
            rows = asking[start : start + step]
            scores = unit[rows] @ unit[inside].T
            r, c = np.nonzero(scores >= threshold)
            s = scores[r, c]
            a, b = rows[r], inside[c]
            # b's cell is among a's probes; when a's cell is among b's too, b finds a as well:
            # that twin is kept once, as the one with a < b
            twin = (probes[b] == home[a][:, None]).any(axis=1)
            keep = (a != b) & ((a < b) | ~twin)
            a, b, s = a[keep], b[keep], s[keep]
            lo, hi = np.minimum(a, b).astype(np.int32), np.maximum(a, b).astype(np.int32)
            lo, hi, s = cap_per_row(lo, hi, s, max_per_row)  # bounds memory on many copies of one picture
            found_i.append(lo), found_j.append(hi), found_s.append(s)
    bar.close()
    del probes, home, members, askers
    if not found_i:
        return _empty()
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    del found_i, found_j, found_s
    i, j, s = cap_per_row(i, j, s, max_per_row)
    return i.astype(np.int64), j.astype(np.int64), s


def _rows_by_cell(cell_of: np.ndarray, nlist: int, per_row: int = 1) -> list[np.ndarray]:
    """For each cell, the rows (``cell_of`` index // per_row) that name it, ascending."""
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(nlist + 1))
    rows = order // per_row
    return [rows[bounds[c] : bounds[c + 1]] for c in range(nlist)]


def candidate_pairs(unit: np.ndarray, threshold: float, search: str = "auto", max_per_row: int = MAX_LINKS_PER_ROW,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Pairs i < j above ``threshold``: exact below ``ANN_FROM`` rows or with ``search="exact"``, else by the index."""
    if search not in SEARCHES:
        raise ValueError(f"search is one of {', '.join(SEARCHES)}, not {search!r}")
    if search == "ann" or (search == "auto" and len(unit) >= ANN_FROM):
        return ann_candidate_pairs(unit, threshold, max_per_row=max_per_row, progress=progress)
    return cosine_pairs(unit, threshold, max_per_row=max_per_row, progress=progress)


def default_nlist(n: int) -> int:
    """Cells: about 6 sqrt(N) (searching costs ~ N^2 nprobe / nlist, assigning rows ~ N nlist), at most N / 40."""
    return int(max(1, min(n // SAMPLE_PER_CELL, round(6 * np.sqrt(n)))))


def cap_per_row(i: np.ndarray, j: np.ndarray, s: np.ndarray,
                max_per_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Pairs sorted by (i, best first), each i keeping its best ``max_per_row`` partners (as cosine_pairs does)."""
    order = np.lexsort((-s, i))
    i, j, s = i[order], j[order], s[order]
    if not len(i):
        return _empty()
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    counts = np.diff(np.r_[starts, len(i)])
    rank = np.arange(len(i)) - np.repeat(starts, counts)
    keep = rank < max_per_row
    return i[keep], j[keep], s[keep]


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
