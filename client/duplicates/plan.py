"""Which file of each duplicate group is kept, and which would go: the plan, before anything is touched.

One file per group is kept, by a rule (``KEEP_RULES``; the default: most pixels, then the
largest file, then the oldest, then the path, so the choice is stable). Every other member
goes, exact copies inside a near group too. Symbolic links never go and are never the kept
copy; a file that a link in the group points to stays too, so no link is left dangling.
Only headers are read (the pixel count), never the pixels. ``client.moves`` carries a plan out.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from client.duplicates.grouping import Group
from client.image_files import pixel_count

KEEP_RULES = ("pixels", "largest", "oldest", "newest", "shortest-path")
DEFAULT_KEEP = "pixels"


@dataclass(frozen=True)
class FileFacts:
    """What the plan knows of a file; the mover checks it again right before touching the file."""

    size: int
    mtime_ns: int
    pixels: int  # width x height from the header; 0 when it cannot be read
    symlink: bool = False


@dataclass(frozen=True)
class Step:
    """One file of the plan. ``action``: keep, go (moved or trashed) or leave (not touched, ``why`` says why)."""

    group: int  # 1 = the largest group, as in the groups table
    tier: str  # the group's tier
    action: str
    path: str
    relative: str  # the path inside the folder: the mover mirrors it under the destination
    sha256: str
    size: int
    mtime_ns: int
    pixels: int
    kept: str  # the group's kept file (relative), "" when none is
    why: str


def header_pixels(path: str | os.PathLike[str]) -> int:
    """width x height from the image header (``client.image_files.pixel_count``); 0 if unreadable."""
    try:
        return pixel_count(path)
    except Exception:  # an unreadable header only loses the pixel criterion for this file
        return 0


def file_facts(path: str, pixels: Callable[[str], int] = header_pixels) -> FileFacts | None:
    """Size, mtime and pixel count of ``path``, or None when it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return FileFacts(st.st_size, st.st_mtime_ns, 0, symlink=True)
    return FileFacts(st.st_size, st.st_mtime_ns, pixels(path))


def _rank(rule: str, relative: str, facts: FileFacts) -> tuple:
    """Sort key of a candidate under ``rule``: the smallest is kept. The path breaks every tie the same way."""
    pixels, size, mtime = -facts.pixels, -facts.size, facts.mtime_ns
    keys = {
        "pixels": (pixels, size, mtime),
        "largest": (size, pixels, mtime),
        "oldest": (mtime, pixels, size),
        "newest": (-mtime, pixels, size),
        "shortest-path": (len(relative), pixels, size, mtime),
    }
    return (*keys[rule], relative)


_RULE_WORDS = {
    "pixels": "most pixels", "largest": "largest file", "oldest": "oldest", "newest": "newest",
    "shortest-path": "shortest path",
}  # fmt: skip


def _why_kept_over(rule: str, kept: tuple[str, FileFacts], other: tuple[str, FileFacts]) -> str:
    """Why ``kept`` beat ``other``: the first criterion of the rule on which they differ."""
    (kept_rel, k), (other_rel, o) = kept, other
    order = {
        "pixels": ("pixels", "size", "mtime"), "largest": ("size", "pixels", "mtime"),
        "oldest": ("mtime", "pixels", "size"), "newest": ("newer", "pixels", "size"),
        "shortest-path": ("path", "pixels", "size", "mtime"),
    }[rule]  # fmt: skip
    for criterion in order:
        if criterion == "pixels" and k.pixels != o.pixels:
            return f"kept {kept_rel}: more pixels ({_mp(k.pixels)} vs {_mp(o.pixels)})"
        if criterion == "size" and k.size != o.size:
            return f"kept {kept_rel}: larger file ({_bytes(k.size)} vs {_bytes(o.size)})"
        if criterion in ("mtime", "newer") and k.mtime_ns != o.mtime_ns:
            return f"kept {kept_rel}: {'older' if criterion == 'mtime' else 'newer'} ({_dates(k.mtime_ns, o.mtime_ns)})"
        if criterion == "path" and len(kept_rel) != len(other_rel):
            return f"kept {kept_rel}: shorter path"
    return f"kept {kept_rel}: same pixels, size and date, first by path"


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.2f} MP" if pixels else "unreadable header"


def _bytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _dates(a_ns: int, b_ns: int) -> str:
    """Two file dates to the second, or to the microsecond where the seconds agree."""
    a, b = (datetime.fromtimestamp(ns / 1e9) for ns in (a_ns, b_ns))
    fmt = "%Y-%m-%d %H:%M:%S" + (".%f" if a.replace(microsecond=0) == b.replace(microsecond=0) else "")
    return f"{a.strftime(fmt)} vs {b.strftime(fmt)}"


def make_plan(groups: Sequence[Group], folder: str | os.PathLike[str], keep: str = DEFAULT_KEEP,
              facts: Callable[[str], FileFacts | None] = file_facts) -> list[Step]:  # fmt: skip
    """A step per member of each group: one kept by ``keep``, the rest to go (or left, with the reason)."""
    if keep not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {keep!r}; one of {', '.join(KEEP_RULES)}")
    base = Path(folder)
    steps: list[Step] = []
    for number, group in enumerate(groups, start=1):
        known = {m.path: facts(m.path) for m in group.members}
        relative = {m.path: Path(m.path).relative_to(base).as_posix() for m in group.members}
        linked_to = {os.path.realpath(p) for p, f in known.items() if f and f.symlink}
        regular = [m for m in group.members if known[m.path] and not known[m.path].symlink]  # type: ignore[union-attr]
        pinned = [m for m in regular if os.path.realpath(m.path) in linked_to]
        candidates = pinned or regular
        kept = min(candidates, key=lambda m: _rank(keep, relative[m.path], known[m.path])) if candidates else None
        kept_rel = relative[kept.path] if kept else ""
        for m in group.members:
            f = known[m.path]
            if f is None:
                action, why = "leave", "gone since it was scanned"
            elif f.symlink:
                action, why = "leave", "a symbolic link: never moved"
            elif m is kept:
                action, why = "keep", f"kept: {_RULE_WORDS[keep]}" + (", a link points to it" if pinned else "")
            elif m in pinned:
                action, why = "leave", "a symbolic link in the group points to it"
            else:
                action = "go"
                why = _why_kept_over(keep, (kept_rel, known[kept.path]), (relative[m.path], f))  # type: ignore[union-attr,arg-type]
            f = f or FileFacts(0, 0, 0)
            steps.append(Step(number, group.tier, action, m.path, relative[m.path], m.sha256, f.size, f.mtime_ns,
                              f.pixels, kept_rel, why))  # fmt: skip
    return steps
