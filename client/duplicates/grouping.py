"""Duplicate groups: connected components of the links between contents (union-find).

A group's tier is the weakest link it needs: ``exact`` when all its files have the same
bytes, ``near`` when exact and near links connect it, ``similar`` when it needs a similar
link. Each member also says how it is tied in: its strongest link to another member.

Pairs marked "not duplicates" (``apart``) never end up in one group, not even through a
third image: links are joined strongest first, and a link that would join two groups
holding such a pair is left out (a cannot-link constraint on the union-find).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from client.duplicates.pairs import unit_rows
from client.duplicates.phash import PHash
from client.duplicates.rule import HashCache, Link, find_links
from client.duplicates.thresholds import RANK, Thresholds


@dataclass(frozen=True)
class Content:
    """One distinct content (sha256) and every file that holds it."""

    sha256: str
    files: Sequence[tuple[str, str]]  # (name to show, path)


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


class _UnionFind:
    """Union-find whose ``union`` refuses to join two sets holding a pair of ``apart``."""

    def __init__(self, n: int, apart: dict[int, set[int]] | None = None):
        self.parent = list(range(n))
        # per root, only for sets that hold a marked index: those indices, and the ones they must never join
        self.marked: dict[int, set[int]] = {i: {i} for i in apart or {}}
        self.enemies: dict[int, set[int]] = {i: set(others) for i, others in (apart or {}).items()}

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        """Joins the sets of a and b; False when that would put a pair marked apart together (nothing changes)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.enemies.get(ra, set()) & self.marked.get(rb, set()):
            return False
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        if child in self.marked:
            self.marked[root] = self.marked.get(root, set()) | self.marked.pop(child)
            self.enemies[root] = self.enemies.get(root, set()) | self.enemies.pop(child)
        return True


def _apart_indices(contents: Sequence[Content], apart: Collection[tuple[str, str]]) -> dict[int, set[int]]:
    index = {c.sha256: i for i, c in enumerate(contents)}
    out: dict[int, set[int]] = {}
    for a, b in apart:
        if a in index and b in index and a != b:
            out.setdefault(index[a], set()).add(index[b])
            out.setdefault(index[b], set()).add(index[a])
    return out


def build_groups(contents: Sequence[Content], links: Iterable[Link],
                 apart: Collection[tuple[str, str]] = ()) -> list[Group]:  # fmt: skip
    """Connected components with two or more files, largest first, each member with its tie.

    ``apart`` holds pairs of sha256s marked not duplicates: they never share a group.
    """
    links = sorted(links, key=lambda link: (RANK[link.tier], -link.cosine))
    kept_apart = _apart_indices(contents, apart)
    near, every = _UnionFind(len(contents), kept_apart), _UnionFind(len(contents), kept_apart)
    best: dict[int, Link] = {}  # each content's strongest link: sorted, so the first one seen
    for link in links:
        if not every.union(link.a, link.b):
            continue  # it would join a pair marked apart: this link does not count
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
    groups.sort(key=lambda g: (-len(g.members), RANK[g.tier], g.members[0].path))
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


def content_links(contents: Sequence[Content], vectors: np.ndarray, t: Thresholds, similar: bool = False,
                  hashes: Callable[[str], PHash | None] | None = None, search: str = "auto",
                  progress: bool = False) -> list[Link]:  # fmt: skip
    """The links between ``contents`` whose rows of ``vectors`` (same order) match; ``vectors`` is normalised in place.

    ``search``: ``auto`` (exact scan for small sets, an ANN index for large), ``exact`` or ``ann``;
    ``progress``: a bar on stderr while a large set is searched.
    """
    if len(contents) != len(vectors):
        raise ValueError(f"{len(contents)} contents but {len(vectors)} vectors")
    hashes = hashes or HashCache({c.sha256: [p for _, p in c.files] for c in contents})
    unit = unit_rows(vectors, out=vectors) if vectors.dtype == np.float32 else unit_rows(vectors)
    shas = [c.sha256 for c in contents]
    return find_links(unit, shas, t, similar, hashes, search, progress) if len(contents) > 1 else []


def find_groups(contents: Sequence[Content], vectors: np.ndarray, t: Thresholds, similar: bool = False,
                hashes: Callable[[str], PHash | None] | None = None,
                apart: Collection[tuple[str, str]] = (), search: str = "auto") -> list[Group]:  # fmt: skip
    """Groups of ``contents`` whose rows of ``vectors`` (same order) are linked, never joining a pair of ``apart``."""
    return build_groups(contents, content_links(contents, vectors, t, similar, hashes, search), apart)
