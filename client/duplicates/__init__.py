"""Duplicate groups from stored embeddings: exact (same bytes), near (edited copies), similar (same subject).

Two images are linked when one of these holds, strongest first:

- ``exact``: the same sha256 (identical bytes). Free: the folder scan already hashed them.
- ``near``: the same photo after edits (crop, rescale, re-encode, brightness, colour,
  flip, small rotation, caption). Cosine of the embeddings >= ``near``, or cosine >=
  ``near_low`` and the perceptual hashes differ in at most ``hash_bits`` of 64 bits,
  either image mirrored (``phash``). The hash is computed only for the pairs in
  that middle band, from the local files, and only when they can be read.
- ``similar`` (only when asked): cosine >= ``similar`` (same subject, another photo).

A group is a connected component of those links (union-find); a pair marked "not
duplicates" in the store never shares a group, not even through a third image. Its tier is the weakest
link it needs: ``exact`` when all its files have the same bytes, ``near`` when exact and
near links connect it, ``similar`` when it needs a similar link. Each member also says
how it is tied in: its strongest link to another member, and to which.

Pairs are found blockwise (a block of rows against the rows after it), so memory grows
with N x dim, never N x N; from ``ann.ANN_FROM`` contents on, only rows in nearby
k-means cells are compared (``ann``), each pair still scored exactly. Thresholds were chosen by bench/dedup_calibration.py on real
photos; see docs/DEDUP.md.

By role: ``thresholds`` (the numbers per model), ``pairs`` (the linear algebra),
``ann`` (candidate pairs from k-means cells, for large sets), ``rule`` (the pair rule and its pHash cache), ``grouping`` (union-find into groups),
``seen`` (the store query behind ``rank.py --seen``), ``phash`` (perceptual hashes),
``plan`` (which copy of each group is kept and which are moved; ``client.moves`` moves them).
Tables of the results are the command line's business (``client.commands.tables``).
"""


from client.duplicates.grouping import Content, Group, Member, build_groups, content_links, find_groups
from client.duplicates.pairs import cosine_pairs, unit_rows
from client.duplicates.rule import HashCache, Link, classify, find_links
from client.duplicates.seen import SeenMatch, seen_matches
from client.duplicates.thresholds import CALIBRATED, TIERS, UNCALIBRATED, Thresholds, thresholds_for

__all__ = [
    "CALIBRATED", "TIERS", "UNCALIBRATED", "Content", "Group", "HashCache", "Link", "Member", "SeenMatch",
    "Thresholds", "build_groups", "classify", "content_links", "cosine_pairs", "find_groups", "find_links",
    "seen_matches",
    "thresholds_for", "unit_rows",
]  # fmt: skip
