"""Have I seen this image, or an edit of it? The store is asked; nothing is embedded."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.duplicates.phash import PHash, phash_file
from client.duplicates.rule import HashCache, HashPair, Link, classify
from client.duplicates.thresholds import RANK, Thresholds
from client.store import EmbeddingStore, StoredImage


@dataclass(frozen=True)
class SeenMatch:
    tier: str
    score: float
    sha256: str
    paths: list[str]
    why: str


def seen_matches(
    store: EmbeddingStore, identity: Mapping[str, Any], query: StoredImage, query_path: str | Path, t: Thresholds,
    *, similar: bool = False, hashes: Callable[[str], PHash | None] | None = None,
) -> list[SeenMatch]:  # fmt: skip
    """The stored images that are the query's bytes elsewhere (exact) or edited copies of it (near).

    Only the store is searched (nothing is embedded): exact matches are other paths
    recorded for the query's sha256, near ones come from a cosine search of the
    store, checked with the pHash of files that can still be read.
    """
    sha, here = query["sha256"], _same_file_key(query_path)
    matches: list[SeenMatch] = []
    elsewhere = [p for p in store.paths(identity, [sha]).get(sha, []) if _same_file_key(p) != here]
    if elsewhere:
        matches.append(SeenMatch("exact", 1.0, sha, elsewhere, "same bytes"))
    hits = _hits_above(store, identity, query["embedding"], t.lowest(similar), exclude={sha})
    known = store.paths(identity, [s for s, _ in hits])
    hashes = hashes or HashCache(known)
    query_hash: list[PHash | None] = []  # computed once, only if a middle-band hit needs it

    def pair(other: str) -> HashPair:
        if not query_hash:
            query_hash.append(phash_file(query_path))
        return query_hash[0], hashes(other)

    for other, cosine in hits:
        decided = classify(cosine, lambda other=other: pair(other), t, similar)
        if decided:
            link = Link(0, 1, decided[0], cosine, decided[1])
            matches.append(SeenMatch(link.tier, cosine, other, known.get(other, []), link.why()))
    matches.sort(key=lambda m: (RANK[m.tier], -m.score))
    return matches


def _hits_above(store: EmbeddingStore, identity: Mapping[str, Any], query: np.ndarray, low: float,
                exclude: set[str]) -> list[tuple[str, float]]:  # fmt: skip
    """All stored images with cosine >= low, asking for more until the last one falls below."""
    k = 32
    while True:
        hits = store.search(identity, query, k, "cosine", exclude=exclude)
        if len(hits) < k or hits[-1][1] < low:
            return [(s, c) for s, c in hits if c >= low]
        k *= 4


def _same_file_key(path: str | Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return str(path)
