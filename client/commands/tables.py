"""The command line's tables: duplicate groups and "seen" matches as DataFrames, one row per file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from client.duplicates import Group, SeenMatch

GROUP_COLUMNS = ["group", "group_tier", "file", "tier", "score", "match", "why", "sha256", "path"]
SEEN_COLUMNS = ["tier", "score", "file", "path", "why", "sha256"]


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
