"""The ranking as a pandas DataFrame: one row per file, best match first, failures last."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from client.embedding import Embedded
from client.metrics import Metric, score_in_slices
from client.scan import ImageFile

COLUMNS = ["rank", "file", "score", "label", "probability", "labels", "duplicate_of", "sha256", "path", "error"]
TEXT_COLUMNS = [c for c in COLUMNS if c not in ("rank", "score", "probability")]


def format_labels(predictions: list[dict]) -> str:
    return "; ".join(f"{p['label']} ({p['probability']:.3f})" for p in predictions)


def rank_files(
    files: Sequence[ImageFile], reference: ImageFile, embedded: Embedded, metric: Metric
) -> pd.DataFrame:
    """Scores every file but the reference itself against the reference's vector.

    Built as columns already in rank order: per file the frame holds a few pointers, a float and its
    labels' text, and no per-file dict or intermediate frame is made (DESIGN, library scale)."""
    query = embedded.vector(reference.sha256)
    ref = os.path.realpath(reference.path)
    # only a file with the reference's bytes can be the reference itself (under another name: a link)
    others = [f for f in files if f.sha256 != reference.sha256 or os.path.realpath(f.path) != ref]
    first_with_sha: dict[str, str] = {reference.sha256: reference.name}
    for f in others:
        first_with_sha.setdefault(f.sha256, f.name)
    scores = score_in_slices(metric, query, embedded.live())  # every row once, a slice at a time
    ok = [f for f in others if f.sha256 in embedded]
    ok_scores = scores[np.fromiter((embedded.row(f.sha256) for f in ok), dtype=np.int64, count=len(ok))]
    # best first, ties by file name; a score that is not a number goes with the failures, unranked
    by_name = np.argsort(np.array([f.name for f in ok], dtype=object), kind="stable")
    keyed = -ok_scores[by_name] if metric.descending else ok_scores[by_name]
    ranked = by_name[np.argsort(keyed, kind="stable")]
    ranked, unscored = ranked[~np.isnan(ok_scores[ranked])], np.flatnonzero(np.isnan(ok_scores))
    failed = [ok[i] for i in unscored] + [f for f in others if f.sha256 in embedded.errors]
    rows = [ok[i] for i in ranked] + failed
    scored = len(ranked) + len(unscored)
    probability = np.full(len(rows), np.nan)
    # the text columns as one object block, laid out (columns, rows) as pandas keeps a block, so the frame
    # holds this array itself (a dict of lists would be converted, then copied into a block)
    text = np.full((len(TEXT_COLUMNS), len(rows)), None, dtype=object)
    text[TEXT_COLUMNS.index("file")] = [f.name for f in rows]
    for n, f in enumerate(rows[:scored]):
        predictions = embedded.predictions(f.sha256)  # a few dicts, gone at the next file
        text[TEXT_COLUMNS.index("label"), n] = predictions[0]["label"]
        probability[n] = predictions[0]["probability"]
        text[TEXT_COLUMNS.index("labels"), n] = format_labels(predictions)
    text[TEXT_COLUMNS.index("duplicate_of"), :scored] = [_duplicate_of(f, first_with_sha) for f in rows[:scored]]
    text[TEXT_COLUMNS.index("sha256")] = [f.sha256 for f in rows]
    text[TEXT_COLUMNS.index("path")] = [f.path for f in rows]
    text[TEXT_COLUMNS.index("error")] = [""] * scored + [_error(embedded.errors[f.sha256]) for f in rows[scored:]]
    frame = pd.DataFrame(text.T, columns=TEXT_COLUMNS, copy=False)
    rank = np.arange(1, len(rows) + 1)
    if failed:
        rank = pd.array(rank, dtype="Int64")
        rank[len(ranked) :] = pd.NA
    score = np.concatenate([ok_scores[ranked], ok_scores[unscored], np.full(len(rows) - scored, np.nan)])
    for name, values in (("rank", rank), ("score", score), ("probability", probability)):
        frame.insert(COLUMNS.index(name), name, values)
    return frame


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


def _error(error: dict) -> str:
    return f"{error['code']}: {error['message']}"


def _duplicate_of(f: ImageFile, first_with_sha: dict[str, str]) -> str:
    first = first_with_sha[f.sha256]
    return first if first != f.name else ""
