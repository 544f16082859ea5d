"""client.store.matrix.top_keys: the want highest keys of a search, by a sample first when there are many."""

from __future__ import annotations

import numpy as np
import pytest

from client.store import matrix
from client.store.matrix import top_keys


def expected(keys: np.ndarray, want: int) -> list[float]:
    finite = np.sort(keys[np.isfinite(keys)])[::-1]
    return sorted(finite[:want].tolist())


@pytest.mark.parametrize("want", [1, 10, 100, 2000])
@pytest.mark.parametrize("layout", ["random", "sorted", "reversed", "ties", "ruled_out"])
def test_the_highest_keys_whatever_their_layout(want: int, layout: str) -> None:
    rng = np.random.default_rng(want)
    keys = rng.standard_normal(200_000).astype(np.float32)
    if layout == "sorted":  # the best keys all fall between the sample's points
        keys.sort()
    elif layout == "reversed":
        keys[::-1].sort()
    elif layout == "ties":
        keys = np.round(keys, 1)
    elif layout == "ruled_out":  # the sample sees only -inf: excluded rows, as a search marks them
        keys[::matrix.SAMPLE_STEP] = -np.inf
    rows = top_keys(keys, want)
    assert len(rows) == want == len(set(rows.tolist()))
    assert sorted(keys[rows].tolist()) == expected(keys, want)


def test_rows_ruled_out_are_never_returned_even_when_too_few_are_left() -> None:
    keys = np.full(100_000, -np.inf, dtype=np.float32)
    keys[[5, 70_000, 99_999]] = [1.0, 3.0, 2.0]
    assert sorted(top_keys(keys, 10).tolist()) == [5, 70_000, 99_999]
    assert top_keys(np.full(100_000, -np.inf, dtype=np.float32), 10).tolist() == []


def test_the_sample_is_what_answers_a_large_search(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    full_sorts = []
    original = np.argpartition

    def counted(a, k, *rest, **kw):
        full_sorts.append(len(a))
        return original(a, k, *rest, **kw)

    monkeypatch.setattr(np, "argpartition", counted)
    rows = top_keys(keys, 10)
    assert sorted(keys[rows].tolist()) == expected(keys, 10)
    assert max(full_sorts) < 10_000  # the partial sort saw the keys above the sample's floor, not a million
