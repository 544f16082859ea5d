"""The command line's tables: duplicate groups, "seen" matches and the plans that act on groups, one row per file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from client.duplicates import Group, SeenMatch
from client.duplicates.plan import Step
from client.moves import TRASH, Outcome

GROUP_COLUMNS = ["group", "group_tier", "file", "tier", "score", "match", "why", "sha256", "path"]
SEEN_COLUMNS = ["tier", "score", "file", "path", "why", "sha256"]
PLAN_COLUMNS = ["group", "group_tier", "action", "file", "status", "new_path", "why", "pixels", "size", "sha256", "path"]  # fmt: skip
UNDO_COLUMNS = ["status", "original_path", "new_path", "reason", "group", "sha256"]


def groups_frame(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per file: its group (1 = largest), the group's tier and how the file is tied in."""
    rows = [
        {"group": n, "group_tier": g.tier, "file": m.file, "tier": m.tier, "score": round(m.score, 3),
         "match": m.match, "why": m.why, "sha256": m.sha256, "path": m.path}
        for n, g in enumerate(groups, start=1) for m in g.members
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def seen_frame(matches: Sequence[SeenMatch]) -> pd.DataFrame:
    """One row per known path of each match, exact first, then by cosine."""
    rows = [
        {"tier": m.tier, "score": round(m.score, 3), "file": Path(p).name if p else "", "path": p, "why": m.why,
         "sha256": m.sha256}
        for m in matches for p in (m.paths or [""])
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=SEEN_COLUMNS)


def plan_frame(steps: Sequence[Step], outcomes: Sequence[Outcome], trash: bool) -> pd.DataFrame:
    """One row per group member: kept, moved (or trashed), or left, and what became of it."""
    by_path = {str(o.move.source): o for o in outcomes}
    rows = []
    for s in steps:
        done = by_path.get(os.path.abspath(s.path))
        action = ("trash" if trash else "move") if s.action == "go" else s.action
        status = "" if done is None else done.status + (f": {done.reason}" if done.reason else "")
        target = "" if done is None else (str(done.move.target) if done.move.target else TRASH)
        rows.append({"group": s.group, "group_tier": s.tier, "action": action, "file": s.relative, "status": status,
                     "new_path": target, "why": s.why, "pixels": s.pixels, "size": s.size, "sha256": s.sha256,
                     "path": s.path})  # fmt: skip
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def undo_frame(outcomes: Sequence[Outcome]) -> pd.DataFrame:
    """One row per recorded move: restored, already in place, or skipped and why."""
    rows = [
        {"status": o.status, "original_path": str(o.move.source), "new_path": str(o.move.target), "reason": o.reason,
         "group": o.move.group, "sha256": o.move.sha256}
        for o in outcomes
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=UNDO_COLUMNS)
