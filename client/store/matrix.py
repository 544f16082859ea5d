"""Every stored vector of one model in RAM as one float32 matrix, so that a search is one matmul.

The SQLite back end keeps one per model it has searched; the norms are kept beside the
vectors so that cosine and euclidean candidates cost one matrix-vector product.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from client.metrics import Metric, score_in_slices


@dataclass
class VectorMatrix:
    """Every stored vector of one model, in RAM, so that a search is one matmul."""

    dim: int
    shas: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    vectors: np.ndarray = field(init=False)  # (capacity, dim); rows [:n] are live
    sqnorms: np.ndarray = field(init=False)  # squared norms, for euclidean
    inv_norms: np.ndarray = field(init=False)  # 1/norm (0 for a zero vector), for cosine

    def __post_init__(self) -> None:
        self.vectors = np.empty((0, self.dim), dtype=np.float32)
        self.sqnorms = np.empty(0, dtype=np.float32)
        self.inv_norms = np.empty(0, dtype=np.float32)

    def upsert(self, shas: Sequence[str], matrix: np.ndarray) -> None:
        """Replace the rows of known ``shas`` and append the others (``shas`` has no duplicates)."""
        if self.rows.keys().isdisjoint(shas):  # only new images: one slice
            self.append(shas, matrix)
            return
        self.reserve(len(self.shas) + len(shas))
        for sha in shas:
            if self.rows.setdefault(sha, len(self.shas)) == len(self.shas):
                self.shas.append(sha)
        self._fill(np.fromiter((self.rows[sha] for sha in shas), dtype=np.int64, count=len(shas)), matrix)

    def append(self, shas: Sequence[str], matrix: np.ndarray) -> None:
        """Add rows for ``shas``, none of which is present yet."""
        start = len(self.shas)
        self.reserve(start + len(shas))
        self.rows.update(zip(shas, range(start, start + len(shas)), strict=True))
        self.shas.extend(shas)
        self._fill(slice(start, start + len(shas)), matrix)

    def _fill(self, at: slice | np.ndarray, matrix: np.ndarray) -> None:
        self.vectors[at] = matrix
        sq = np.einsum("ij,ij->i", matrix, matrix)
        self.sqnorms[at] = sq
        self.inv_norms[at] = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0)

    def reserve(self, n: int) -> None:
        """Room for ``n`` rows; grows by doubling so a stream of small puts copies rarely."""
        if n <= len(self.vectors):
            return
        capacity = max(n, 2 * len(self.vectors), 1024)
        for name in ("vectors", "sqnorms", "inv_norms"):
            old = getattr(self, name)
            grown = np.empty((capacity, *old.shape[1:]), dtype=np.float32)
            grown[: len(old)] = old
            setattr(self, name, grown)

    def candidates(self, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]) -> np.ndarray:
        """Rows of the ``want`` best by a key that ranks like ``metric`` and costs one matmul."""
        n = len(self.shas)
        live = self.vectors[:n]
        if metric.name in KEYED_METRICS:
            keys = similarity_keys(metric, live @ query, self.inv_norms[:n], self.sqnorms[:n])
        else:  # no matmul shortcut (manhattan): exact scores, in slices to bound memory
            keys = -score_in_slices(metric, query, live)
        keys[[self.rows[sha] for sha in exclude if sha in self.rows]] = -np.inf
        return top_keys(keys, want)


# The metrics whose order follows from one dot product per row and the row's norm.
KEYED_METRICS = ("cosine", "angular", "dot", "euclidean")


def similarity_keys(metric: Metric, dots: np.ndarray, inv_norms: np.ndarray, sqnorms: np.ndarray) -> np.ndarray:
    """Per row, a key that is higher the better the row ranks by ``metric``, from its dot product with the query.

    The query's own norm is left out: it scales or shifts every row alike. Keys are linear in
    the dots, with a slope of at least 0 (client.store.snapshot relies on both).
    """
    if metric.name in ("cosine", "angular"):  # the angle shrinks as the cosine grows
        return dots * inv_norms
    if metric.name == "dot":
        return dots
    if metric.name == "euclidean":  # |m - q|^2 = |m|^2 - 2 m.q + |q|^2
        return 2 * dots - sqnorms
    raise ValueError(f"metric {metric.name} has no key from a dot product")


# top_keys first looks at every SAMPLE_STEP-th key when there are this many: a partial sort of a
# million keys takes 3-5 ms, the sample and one comparison pass about 0.5 ms.
SAMPLE_FROM = 65_536
SAMPLE_STEP = 64


def top_keys(keys: np.ndarray, want: int) -> np.ndarray:
    """Rows of the ``want`` highest keys (in no order), leaving out -inf (rows ruled out)."""
    if 0 < want and len(keys) >= SAMPLE_FROM and want * SAMPLE_STEP * 8 <= len(keys):
        # the sample's want-th highest key has about want x SAMPLE_STEP keys at or above it: when at
        # least ``want`` (all finite) are, the answer is among them
        sample = keys[::SAMPLE_STEP]
        floor = np.partition(sample, len(sample) - want)[len(sample) - want]
        if floor > -np.inf:
            above = np.flatnonzero(keys >= floor)
            if len(above) >= want:
                return above[np.argpartition(-keys[above], want - 1)[:want]]
    want = min(want, int(np.isfinite(keys).sum()))
    if want <= 0:
        return np.empty(0, dtype=np.int64)
    if want == len(keys):
        return np.arange(len(keys))
    return np.argpartition(-keys, want - 1)[:want]
