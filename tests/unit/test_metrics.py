"""Similarity and distance values against scipy's reference implementations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial import distance

from client.metrics import METRICS, get_metric, score_in_slices

RNG = np.random.default_rng(7)
QUERY = RNG.normal(size=64).astype(np.float32)
MATRIX = RNG.normal(size=(50, 64)).astype(np.float32)

REFERENCE = {
    "cosine": lambda q, m: [1 - distance.cosine(q, row) for row in m],
    "dot": lambda q, m: [float(np.dot(q.astype(np.float64), row)) for row in m],
    "euclidean": lambda q, m: [distance.euclidean(q, row) for row in m],
    "manhattan": lambda q, m: [distance.cityblock(q, row) for row in m],
    "angular": lambda q, m: [np.arccos(np.clip(1 - distance.cosine(q, row), -1, 1)) / np.pi for row in m],
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_values_match_scipy(name):
    ours = get_metric(name).score(QUERY, MATRIX)
    assert np.allclose(ours, REFERENCE[name](QUERY, MATRIX), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_best_puts_the_closest_first_for_similarities_and_distances(name):
    metric = get_metric(name)
    scores = metric.score(QUERY, MATRIX)
    best = metric.best(scores, 5)
    expected = np.argsort(-scores if metric.descending else scores, kind="stable")[:5]
    assert list(best) == list(expected)


def test_an_identical_vector_is_the_best_match_under_every_normalised_metric():
    matrix = np.vstack([MATRIX, QUERY])
    for name in ("cosine", "euclidean", "manhattan", "angular"):
        metric = get_metric(name)
        assert metric.best(metric.score(QUERY, matrix), 1)[0] == len(matrix) - 1


def test_unknown_metric_names_the_choices():
    with pytest.raises(ValueError, match="cosine"):
        get_metric("hamming")


@pytest.mark.parametrize("name", sorted(METRICS))
def test_scores_in_slices_are_the_scores_and_memory_stays_a_slice(name):
    """A metric copies the rows it scores; by slices, a large matrix is never copied whole (issue 12)."""
    matrix = np.random.default_rng(3).normal(size=(40_000, 64)).astype(np.float32)  # 10 MB
    metric = get_metric(name)
    tracemalloc.start()
    scores = score_in_slices(metric, QUERY, matrix)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.allclose(scores, metric.score(QUERY, matrix), rtol=1e-6, atol=1e-6)
    assert peak < matrix.nbytes / 3, f"peak {peak / 2**20:.1f} MiB for a {matrix.nbytes / 2**20:.0f} MiB matrix"
