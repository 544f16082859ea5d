"""The ranking as a pandas DataFrame: one row per file, best match first, failures last."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from client.embedding import Embedded
from client.metrics import Metric
from client.scan import ImageFile

COLUMNS = ["rank", "file", "score", "label", "probability", "labels", "duplicate_of", "sha256", "path", "error"]
SCORE_SLICE = 65536  # rows scored at a time


def format_labels(predictions: list[dict]) -> str:
    return "; ".join(f"{p['label']} ({p['probability']:.3f})" for p in predictions)


def rank_files(
    files: Sequence[ImageFile], reference: ImageFile, embedded: Embedded, metric: Metric
) -> pd.DataFrame:
    """Scores every file but the reference itself against the reference's vector."""
    query = embedded.vector(reference.sha256)
    ref = reference.path.resolve()
    others = [f for f in files if f.path.resolve() != ref]
    first_with_sha: dict[str, str] = {reference.sha256: reference.name}
    for f in others:
        first_with_sha.setdefault(f.sha256, f.name)
    # every stored row scored once, by slices (a whole-matrix metric would copy the matrix)
    live = embedded.live()
    scores = np.concatenate([metric.score(query, live[i : i + SCORE_SLICE]) for i in range(0, len(live), SCORE_SLICE)]
                            or [np.empty(0)])  # fmt: skip
    # built column by column: a dict per row would cost more than the row's vector
    ok = [f for f in others if f.sha256 in embedded]
    failed = [f for f in others if f.sha256 in embedded.errors]
    top = [embedded.predictions(f.sha256) for f in ok]
    errors = [embedded.errors[f.sha256] for f in failed]
    frame = pd.DataFrame({
        "file": [f.name for f in ok + failed],
        "score": np.concatenate([scores[[embedded.row(f.sha256) for f in ok]], np.full(len(failed), np.nan)]),
        "label": [p[0]["label"] for p in top] + [None] * len(failed),
        "probability": [p[0]["probability"] for p in top] + [None] * len(failed),
        "labels": [format_labels(p) for p in top] + [None] * len(failed),
        "duplicate_of": [_duplicate_of(f, first_with_sha) for f in ok] + [None] * len(failed),
        "sha256": [f.sha256 for f in ok + failed],
        "path": [str(f.path) for f in ok + failed],
        "error": [""] * len(ok) + [f"{e['code']}: {e['message']}" for e in errors],
    }, columns=COLUMNS[1:])  # fmt: skip
    return order(frame, metric)


def rank_stored(hits: list[tuple[str, float]], items: dict, paths: dict[str, list[str]], metric: Metric) -> pd.DataFrame:
    """A collection search: the store's best matches, each with the paths it was seen at."""
    rows = []
    for sha, score in hits:
        predictions = items[sha]["predictions"]
        known = paths.get(sha) or [""]
        rows.append({
            "file": Path(known[0]).name, "score": score, "label": predictions[0]["label"],
            "probability": predictions[0]["probability"], "labels": format_labels(predictions),
            "duplicate_of": "; ".join(known[1:]), "sha256": sha, "path": known[0], "error": "",
        })  # fmt: skip
    return order(pd.DataFrame(rows, columns=COLUMNS[1:]), metric)


def order(frame: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    ranked = frame[frame["score"].notna()].sort_values(
        ["score", "file"], ascending=[not metric.descending, True], kind="stable"
    )
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    failed = frame[frame["score"].isna()].assign(rank=pd.NA)
    return pd.concat([ranked, failed[ranked.columns]], ignore_index=True) if len(failed) else ranked.reset_index(drop=True)


def _duplicate_of(f: ImageFile, first_with_sha: dict[str, str]) -> str:
    first = first_with_sha[f.sha256]
    return first if first != f.name else ""
