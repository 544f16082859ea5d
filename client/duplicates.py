"""Duplicate groups from stored embeddings: exact (same bytes), near (edited copies), similar (same subject).

Two images are linked when one of these holds, strongest first:

- ``exact``: the same sha256 (identical bytes). Free: the folder scan already hashed them.
- ``near``: the same photo after edits (crop, rescale, re-encode, brightness, colour,
  flip, small rotation, caption). Cosine of the embeddings >= ``near``, or cosine >=
  ``near_low`` and the perceptual hashes differ in at most ``hash_bits`` of 64 bits,
  either image mirrored (client/phash.py). The hash is computed only for the pairs in
  that middle band, from the local files, and only when they can be read.
- ``similar`` (only when asked): cosine >= ``similar`` (same subject, another photo).

A group is a connected component of those links (union-find). Its tier is the weakest
link it needs: ``exact`` when all its files have the same bytes, ``near`` when exact and
near links connect it, ``similar`` when it needs a similar link. Each member also says
how it is tied in: its strongest link to another member, and to which.

Pairs are found blockwise (a block of rows against the rows after it), so memory grows
with N x dim, never N x N. Thresholds were chosen by bench/dedup_calibration.py on real
photos; see docs/DEDUP.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from client.phash import PHash, distance, phash_file
from client.store import EmbeddingStore, StoredImage

TIERS = ("exact", "near", "similar")  # strongest first
_RANK = {tier: i for i, tier in enumerate(TIERS)}


@dataclass(frozen=True)
class Thresholds:
    near: float  # cosine that makes a near duplicate on its own
    near_low: float  # lower cosine that does when the pHashes agree too
    hash_bits: int  # most differing bits of the 64-bit pHash (mirror-aware) for the near_low band
    similar: float  # cosine for the similar tier
    calibrated: bool = True


# Per architecture, from bench/dedup_calibration.py (docs/DEDUP.md has the tables). The
# embedding's geometry differs between models, so a threshold never carries over.
CALIBRATED: dict[str, Thresholds] = {
    "efficientnet_lite0": Thresholds(near=0.80, near_low=0.65, hash_bits=12, similar=0.55),
}
# For a model nobody has calibrated: a cautious guess (few false groups, fewer crops found).
UNCALIBRATED = Thresholds(near=0.92, near_low=0.60, hash_bits=10, similar=0.80, calibrated=False)


def thresholds_for(architecture: str, **overrides: float | int | None) -> Thresholds:
    """The calibrated thresholds of ``architecture`` (else a cautious guess), with any overrides that are not None."""
    base = CALIBRATED.get(architecture, UNCALIBRATED)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **given) if given else base


# --- pairs above a cosine, blockwise -------------------------------------------------------------

# Scores of one block: rows x N float32 cells. 2**26 cells = 256 MiB, whatever N is.
BLOCK_CELLS = 1 << 26
MAX_LINKS_PER_ROW = 64  # bounds memory on a collection of thousands of copies of one picture


def unit_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32; ``out=vectors`` works in place."""
    unit = np.asarray(vectors, dtype=np.float32) if out is None else out
    norms = np.linalg.norm(unit, axis=1)
    np.divide(1.0, norms, out=norms, where=norms > 0)
    if out is None:
        return unit * norms[:, None]
    unit *= norms[:, None]
    return unit


def cosine_pairs(
    unit: np.ndarray, threshold: float, *, max_per_row: int = MAX_LINKS_PER_ROW, block_cells: int = BLOCK_CELLS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Every pair i < j of unit rows with cosine >= threshold, as arrays (i, j, cosine).

    Each row keeps at most ``max_per_row`` partners after it (its best ones); a group of
    many copies stays connected through them. Exact: no approximation, no N x N matrix.
    """
    n = len(unit)
    found_i, found_j, found_s = [], [], []
    rows = max(1, min(n, block_cells // max(n, 1)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
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
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


# --- links and groups ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """One distinct content (sha256) and every file that holds it."""

    sha256: str
    files: Sequence[tuple[str, str]]  # (name to show, path)


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


@dataclass(frozen=True)
class Member:
    file: str
    path: str
    sha256: str
    tier: str  # how this file is tied to its group
    score: float  # cosine of that tie (1.0 for identical bytes)
    match: str  # the member it is tied to
    why: str


@dataclass
class Group:
    tier: str
    members: list[Member] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The weakest member's tie: how sure the whole group is."""
        return min(m.score for m in self.members)


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


def classify(cosine: float, hashes: tuple[PHash | None, PHash | None] | Callable[[], tuple],
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
               hashes: Callable[[str], PHash | None]) -> list[Link]:  # fmt: skip
    """The near (and similar) links between unit rows; ``hashes`` is asked only for middle-band pairs."""
    low = min(t.near_low, t.near, t.similar if similar else np.inf)
    i, j, s = cosine_pairs(unit, low)
    links = []
    for a, b, cosine in zip(i.tolist(), j.tolist(), s.tolist()):
        decided = classify(cosine, lambda a=a, b=b: (hashes(shas[a]), hashes(shas[b])), t, similar)
        if decided:
            links.append(Link(a, b, decided[0], cosine, decided[1]))
    return links


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def build_groups(contents: Sequence[Content], links: Iterable[Link]) -> list[Group]:
    """Connected components with two or more files, largest first, each member with its tie."""
    links = sorted(links, key=lambda link: (_RANK[link.tier], -link.cosine))
    near, every = _UnionFind(len(contents)), _UnionFind(len(contents))
    best: dict[int, Link] = {}  # each content's strongest link: sorted, so the first one seen
    for link in links:
        every.union(link.a, link.b)
        if link.tier == "near":
            near.union(link.a, link.b)
        best.setdefault(link.a, link)
        best.setdefault(link.b, link)
    components: dict[int, list[int]] = {}
    for index in range(len(contents)):
        components.setdefault(every.find(index), []).append(index)
    groups = []
    for indices in components.values():
        if sum(len(contents[i].files) for i in indices) < 2:
            continue
        if len(indices) == 1:
            tier = "exact"
        else:
            tier = "near" if len({near.find(i) for i in indices}) == 1 else "similar"
        groups.append(Group(tier, [m for i in indices for m in _members(contents, i, best.get(i))]))
    for group in groups:
        group.members.sort(key=lambda m: (m.path, m.file))
    groups.sort(key=lambda g: (-len(g.members), _RANK[g.tier], g.members[0].path))
    return groups


def _members(contents: Sequence[Content], index: int, link: Link | None) -> list[Member]:
    content = contents[index]
    members = []
    for k, (name, path) in enumerate(content.files):
        if len(content.files) > 1:  # identical bytes beat any link
            other = content.files[1 if k == 0 else 0][0]
            members.append(Member(name, path, content.sha256, "exact", 1.0, other, f"same bytes as {other}"))
        else:
            assert link is not None, "a lone file in a group has a link"
            other = contents[link.b if link.a == index else link.a].files[0][0]
            members.append(Member(name, path, content.sha256, link.tier, link.cosine, other, link.why()))
    return members


def find_groups(contents: Sequence[Content], vectors: np.ndarray, t: Thresholds, similar: bool = False,
                hashes: Callable[[str], PHash | None] | None = None) -> list[Group]:  # fmt: skip
    """Groups of ``contents`` whose rows of ``vectors`` (same order) are linked; ``vectors`` is normalised in place."""
    if len(contents) != len(vectors):
        raise ValueError(f"{len(contents)} contents but {len(vectors)} vectors")
    hashes = hashes or HashCache({c.sha256: [p for _, p in c.files] for c in contents})
    unit = unit_rows(vectors, out=vectors) if vectors.dtype == np.float32 else unit_rows(vectors)
    links = find_links(unit, [c.sha256 for c in contents], t, similar, hashes) if len(contents) > 1 else []
    return build_groups(contents, links)


GROUP_COLUMNS = ["group", "group_tier", "file", "tier", "score", "match", "why", "sha256", "path"]


def groups_frame(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per file: its group (1 = largest), the group's tier and how the file is tied in."""
    rows = [
        {"group": n, "group_tier": g.tier, "file": m.file, "tier": m.tier, "score": round(m.score, 3),
         "match": m.match, "why": m.why, "sha256": m.sha256, "path": m.path}
        for n, g in enumerate(groups, start=1) for m in g.members
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


# --- have I seen this? ---------------------------------------------------------------------------

SEEN_COLUMNS = ["tier", "score", "file", "path", "why", "sha256"]


@dataclass(frozen=True)
class SeenMatch:
    tier: str
    score: float
    sha256: str
    paths: list[str]
    why: str


def seen_matches(
    store: EmbeddingStore, model: str, query: StoredImage, query_path: str | Path, t: Thresholds,
    *, similar: bool = False, hashes: Callable[[str], PHash | None] | None = None,
) -> list[SeenMatch]:  # fmt: skip
    """The stored images that are the query's bytes elsewhere (exact) or edited copies of it (near).

    Only the store is searched (nothing is embedded): exact matches are other paths
    recorded for the query's sha256, near ones come from a cosine search of the
    store, checked with the pHash of files that can still be read.
    """
    sha, here = query["sha256"], _same_file_key(query_path)
    matches: list[SeenMatch] = []
    elsewhere = [p for p in store.paths(model, [sha]).get(sha, []) if _same_file_key(p) != here]
    if elsewhere:
        matches.append(SeenMatch("exact", 1.0, sha, elsewhere, "same bytes"))
    low = min(t.near_low, t.near, t.similar if similar else np.inf)
    hits = _hits_above(store, model, query["embedding"], low, exclude={sha})
    known = store.paths(model, [s for s, _ in hits])
    hashes = hashes or HashCache(known)
    query_hash: list[PHash | None] = []  # computed once, only if a middle-band hit needs it

    def pair(other: str) -> tuple[PHash | None, PHash | None]:
        if not query_hash:
            query_hash.append(phash_file(query_path))
        return query_hash[0], hashes(other)

    for other, cosine in hits:
        decided = classify(cosine, lambda other=other: pair(other), t, similar)
        if decided:
            link = Link(0, 1, decided[0], cosine, decided[1])
            matches.append(SeenMatch(link.tier, cosine, other, known.get(other, []), link.why()))
    matches.sort(key=lambda m: (_RANK[m.tier], -m.score))
    return matches


def _hits_above(store: EmbeddingStore, model: str, query: np.ndarray, low: float,
                exclude: set[str]) -> list[tuple[str, float]]:  # fmt: skip
    """All stored images with cosine >= low, asking for more until the last one falls below."""
    k = 32
    while True:
        hits = store.search(model, query, k, "cosine", exclude=exclude)
        if len(hits) < k or hits[-1][1] < low:
            return [(s, c) for s, c in hits if c >= low]
        k *= 4


def _same_file_key(path: str | Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return str(path)


def seen_frame(matches: Sequence[SeenMatch]) -> pd.DataFrame:
    """One row per known path of each match, exact first, then by cosine."""
    rows = [
        {"tier": m.tier, "score": round(m.score, 3), "file": Path(p).name if p else "", "path": p, "why": m.why,
         "sha256": m.sha256}
        for m in matches for p in (m.paths or [""])
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=SEEN_COLUMNS)
