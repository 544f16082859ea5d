"""Similarity and distance between one query vector and many, vectorised.

Similarities (cosine, dot) rank descending; distances (euclidean, manhattan,
angular) rank ascending. ``Metric.better_first`` sorts either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "similarity" or "distance"
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (d,), (n, d) -> (n,)

    @property
    def descending(self) -> bool:
        return self.kind == "similarity"

    def best(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k best scores, best first, without sorting everything."""
        keyed = -scores if self.descending else scores
        k = min(k, len(scores))
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        part = np.argpartition(keyed, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        return part[np.argsort(keyed[part], kind="stable")]


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def cosine(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return _unit(matrix) @ _unit(query)


def dot(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return matrix @ query


def euclidean(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.linalg.norm(matrix - query, axis=1)


def manhattan(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.abs(matrix - query).sum(axis=1)


def angular(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The angle between the vectors as a fraction of pi: 0 same direction, 1 opposite."""
    return np.arccos(np.clip(cosine(query, matrix), -1.0, 1.0)) / np.pi


METRICS: dict[str, Metric] = {
    "cosine": Metric("cosine", "similarity", cosine),
    "dot": Metric("dot", "similarity", dot),
    "euclidean": Metric("euclidean", "distance", euclidean),
    "manhattan": Metric("manhattan", "distance", manhattan),
    "angular": Metric("angular", "distance", angular),
}


# Rows scored at a time: a metric copies its rows (cosine normalises them, euclidean subtracts), so a
# whole matrix at once would cost a second matrix; a slice costs 4096 x dim x 4 bytes (20 MB at 1280-d).
SCORE_SLICE = 4096


def score_in_slices(metric: Metric, query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``metric.score(query, matrix)``, computed a slice of rows at a time so that memory stays flat."""
    return np.concatenate(
        [metric.score(query, matrix[i : i + SCORE_SLICE]) for i in range(0, len(matrix), SCORE_SLICE)]
        or [np.empty(0)]
    )


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}") from None
