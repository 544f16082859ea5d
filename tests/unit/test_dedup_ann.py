"""Candidate pairs from the ANN index agree with the exact scan: same scores, no extra pair, recall >= 0.99."""

from __future__ import annotations

import numpy as np
import pytest

from client.duplicates import CALIBRATED, Content, ann, find_groups, unit_rows
from client.duplicates.ann import ann_candidate_pairs, candidate_pairs
from client.duplicates.pairs import cosine_pairs
from client.duplicates.phash import PHash

LITE_T = CALIBRATED["efficientnet_lite0"]
UNCAPPED = 10**6


def embedding_like(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """Sparse non-negative vectors clustered by subject, a tenth of them edited copies of another, as unit rows."""
    rng = np.random.default_rng(seed)
    subjects = rng.gamma(0.2, 1.0, size=(n // 40, dim)).astype(np.float32)
    vectors = 0.7 * subjects[rng.integers(0, len(subjects), n)] + rng.gamma(0.2, 1.0, (n, dim)).astype(np.float32)
    copies, sources = rng.choice(n, n // 10, replace=False), rng.integers(0, n, n // 10)
    edit = rng.uniform(0.1, 1.0, (len(copies), 1)).astype(np.float32)  # from barely edited to another photo
    vectors[copies] = vectors[sources] + edit * rng.gamma(0.2, 1.0, (len(copies), dim)).astype(np.float32)
    return unit_rows(vectors)


def as_keys(i: np.ndarray, j: np.ndarray, n: int) -> set[int]:
    return set((i * n + j).tolist())


def test_ann_pairs_are_exact_pairs_and_find_nearly_all_of_them():
    unit = embedding_like(4000)
    threshold = LITE_T.near_low
    ei, ej, _ = cosine_pairs(unit, threshold, max_per_row=UNCAPPED)
    ai, aj, a_s = ann_candidate_pairs(unit, threshold, max_per_row=UNCAPPED)
    want, got = as_keys(ei, ej, len(unit)), as_keys(ai, aj, len(unit))
    assert len(want) > 5000  # subjects and copies: a real search, not a handful of pairs
    assert got <= want  # every score is exact, so no pair the exact scan would not find
    assert len(got & want) / len(want) >= 0.99
    assert (ai < aj).all() and np.allclose(a_s, np.einsum("ij,ij->i", unit[ai], unit[aj]), atol=1e-6)


def test_ann_keeps_the_same_cap_per_row_as_the_exact_scan():
    unit = embedding_like(3000)
    unit[2000:2300] = unit[5]  # 301 copies of one picture: every row of them has 300 partners
    i, j, _ = ann_candidate_pairs(unit, 0.95, max_per_row=8)
    assert np.bincount(i).max() == 8
    assert {5, *range(2000, 2300)} <= {*i.tolist(), *j.tolist()}  # capped rows still reach every copy


def test_groups_from_ann_are_the_exact_groups_or_split_from_them():
    unit = embedding_like(3000, seed=1)
    contents = [Content(f"{k:064d}", [(f"{k}.jpg", f"/{k}.jpg")]) for k in range(len(unit))]

    def hashes(sha: str) -> PHash | None:
        return PHash(0, 0) if int(sha) % 3 else None  # some pairs of the middle band pass the pHash, some cannot

    def groups(search: str) -> set[tuple[str, frozenset[str]]]:
        found = find_groups(contents, unit.copy(), LITE_T, hashes=hashes, search=search)
        return {(g.tier, frozenset(m.file for m in g.members)) for g in found}

    exact, approximate = groups("exact"), groups("ann")
    assert len(exact) > 100
    assert len(exact & approximate) / len(exact) >= 0.97  # a missed pair can split a group...
    for _, members in approximate:  # ...but never join files the exact scan keeps apart
        assert any(members <= whole for _, whole in exact)


def test_auto_scans_exactly_below_the_crossover_and_indexes_above(monkeypatch):
    unit = embedding_like(400, 16)
    calls = []
    monkeypatch.setattr(ann, "ann_candidate_pairs", lambda *a, **k: calls.append(len(a[0])) or cosine_pairs(*a, **k))
    candidate_pairs(unit, 0.9)
    assert calls == []
    monkeypatch.setattr(ann, "ANN_FROM", 300)
    candidate_pairs(unit, 0.9)
    candidate_pairs(unit, 0.9, search="exact")
    assert calls == [400]
    with pytest.raises(ValueError, match="exact"):
        candidate_pairs(unit, 0.9, search="fast")


@pytest.mark.parametrize("search", ["exact", "ann"])
def test_grouping_a_large_set_shows_a_bar_with_its_rate_and_only_when_asked(capsys, search):
    unit = embedding_like(20_000, dim=16)
    quiet = candidate_pairs(unit, LITE_T.near, search)
    assert capsys.readouterr().err == ""
    shown = candidate_pairs(unit, LITE_T.near, search, progress=True)
    bar = capsys.readouterr().err
    unit_name = "pair" if search == "exact" else "probe"
    assert "grouping: 100%" in bar and f"{unit_name}/s" in bar, bar
    assert all(np.array_equal(a, b) for a, b in zip(quiet, shown, strict=True))
