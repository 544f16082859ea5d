"""The pair rule: whether two contents are near duplicates, similar, or neither.

``near`` when the cosine of the embeddings is >= ``near``, or >= ``near_low`` and the
perceptual hashes differ in at most ``hash_bits`` of 64 bits (either image mirrored).
The hash is computed only for pairs in that middle band, from the local files, and
only when they can be read. ``similar`` (only when asked) when the cosine is >= ``similar``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from client.duplicates.ann import candidate_pairs
from client.duplicates.phash import PHash, distance, phash_file
from client.duplicates.thresholds import Thresholds

HashPair = tuple[PHash | None, PHash | None]
LOOP_CHUNK = 1 << 20


@dataclass(frozen=True)
class Link:
    a: int  # index into the contents
    b: int
    tier: str
    cosine: float
    hash_bits: int | None = None  # pHash distance, when it decided the link

    def why(self) -> str:
        if self.hash_bits is None:
            return f"cosine {self.cosine:.3f}"
        return f"cosine {self.cosine:.3f}, pHash differs in {self.hash_bits}/64 bits"


class HashCache:
    """pHashes by sha256, computed on first use from the first readable path."""

    def __init__(self, paths: Mapping[str, Sequence[str]], compute: Callable[[str], PHash | None] = phash_file):
        self.paths, self.compute = paths, compute
        self.hashes: dict[str, PHash | None] = {}

    def __call__(self, sha: str) -> PHash | None:
        if sha not in self.hashes:
            self.hashes[sha] = next(
                (h for h in (self.compute(p) for p in self.paths.get(sha, ())) if h is not None), None
            )
        return self.hashes[sha]


def classify(cosine: float, hashes: HashPair | Callable[[], HashPair],
             t: Thresholds, similar: bool) -> tuple[str, int | None] | None:  # fmt: skip
    """The tier of one pair by the rule in the module docstring, and the pHash distance if it was used."""
    if cosine >= t.near:
        return "near", None
    if cosine >= t.near_low:
        a, b = hashes() if callable(hashes) else hashes
        if a is not None and b is not None:
            bits = distance(a, b)
            if bits <= t.hash_bits:
                return "near", bits
    if similar and cosine >= t.similar:
        return "similar", None
    return None


def find_links(unit: np.ndarray, shas: Sequence[str], t: Thresholds, similar: bool,
               hashes: Callable[[str], PHash | None], search: str = "auto", progress: bool = False) -> list[Link]:  # fmt: skip
    """The near (and similar) links between unit rows; ``hashes`` is asked only for middle-band pairs.

    ``search`` says how candidate pairs are found (``ann.candidate_pairs``: exact below
    ``ann.ANN_FROM`` rows, an index above); every candidate gets its exact cosine and this rule.
    """
    i, j, s = candidate_pairs(unit, t.lowest(similar), search, progress=progress)
    # Only pairs that can link go through classify one by one: a middle-band pair needs both pHashes.
    middle = (s < t.near) & (s >= t.near_low)
    known = {row: hashes(shas[row]) for row in np.unique(np.concatenate([i[middle], j[middle]])).tolist()}
    hashed = np.zeros(len(unit), dtype=bool)
    hashed[[row for row, h in known.items() if h is not None]] = True
    can_link = (s >= t.near) | (middle & hashed[i] & hashed[j]) | (similar & (s >= t.similar))
    i, j, s = i[can_link], j[can_link], s[can_link]
    links = []
    for start in range(0, len(i), LOOP_CHUNK):  # Python numbers for a chunk at a time: memory stays flat
        part = slice(start, start + LOOP_CHUNK)
        for a, b, cosine in zip(i[part].tolist(), j[part].tolist(), s[part].tolist(), strict=True):
            decided = classify(cosine, lambda a=a, b=b: (known[a], known[b]), t, similar)
            if decided:
                links.append(Link(a, b, decided[0], cosine, decided[1]))
    return links
