"""Ranking a folder (client.ranking.rank_files) from what a run embedded, without a server."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from client.embedding import Embedded
from client.metrics import get_metric
from client.ranking import COLUMNS, rank_files
from client.scan import ImageFile

DIM = 64


def sha(i: int) -> str:
    return f"{i:064x}"


def embedded(vectors: np.ndarray, k: int = 5) -> Embedded:
    done = Embedded(None, _expected=len(vectors))
    done.add([{"sha256": sha(i), "embedding": v,
               "predictions": [{"index": (i + n) % 1000, "label": f"class {(i + n) % 1000}",
                                "probability": 0.5 / (n + 1)} for n in range(k)]}  # fmt: skip
              for i, v in enumerate(vectors)])  # fmt: skip
    return done


def photo(folder: Path, name: str, content: int) -> ImageFile:
    return ImageFile(str(folder / name), name, sha(content), 10)


def test_best_first_ties_by_name_and_failures_last_without_a_rank(tmp_path: Path) -> None:
    vectors = np.zeros((4, DIM), dtype=np.float32)
    vectors[:, 0] = [1.0, 0.2, 0.9, 0.9]  # contents 2 and 3 tie
    vectors[:, 1] = [0.0, 1.0, 0.4, 0.4]
    done = embedded(vectors)
    done.errors[sha(9)] = {"code": "decode_error", "message": "not an image"}
    ref = photo(tmp_path, "ref.jpg", 0)
    files = [photo(tmp_path, n, c) for n, c in [("z.jpg", 2), ("broken.jpg", 9), ("a.jpg", 3), ("far.jpg", 1)]]
    for metric in ("cosine", "euclidean"):  # a similarity and a distance: the same order here
        frame = rank_files(files + [ref], ref, done, get_metric(metric))
        assert list(frame.columns) == COLUMNS
        assert list(frame["file"]) == ["a.jpg", "z.jpg", "far.jpg", "broken.jpg"]
        assert list(frame["rank"][:3]) == [1, 2, 3] and frame["rank"].isna().tolist() == [False] * 3 + [True]
        assert frame["score"][0] == frame["score"][1] and np.isnan(frame["score"][3])
        assert frame["error"].tolist() == ["", "", "", "decode_error: not an image"]
        assert frame["label"][2] == "class 1" and frame["probability"][2] == 0.5
        assert frame["labels"][2].startswith("class 1 (0.500); class 2 (0.250)")


def test_the_reference_and_links_to_it_are_left_out_and_copies_are_duplicates(tmp_path: Path) -> None:
    (tmp_path / "ref.jpg").write_bytes(b"reference")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "ref.jpg")
    (tmp_path / "copy.jpg").write_bytes(b"reference")
    done = embedded(np.random.default_rng(0).standard_normal((2, DIM)).astype(np.float32))
    ref = photo(tmp_path, "ref.jpg", 0)
    files = [ref, photo(tmp_path, "link.jpg", 0), photo(tmp_path, "copy.jpg", 0), photo(tmp_path, "other.jpg", 1)]
    frame = rank_files(files, ref, done, get_metric("cosine"))
    assert list(frame["file"]) == ["copy.jpg", "other.jpg"]
    assert list(frame["duplicate_of"]) == ["ref.jpg", ""]


@pytest.mark.parametrize("with_failures", [False, True])
def test_each_ranked_file_costs_a_few_hundred_bytes(tmp_path: Path, with_failures: bool) -> None:
    """The ranking frame of a folder: no per-file dicts, no intermediate frames (issue 12, bounded memory)."""
    n = 20_000
    done = embedded(np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32))
    names = [f"{i // 1000:04d}/IMG_{i:07d}.jpg" for i in range(n)]
    files = [ImageFile(os.path.join(str(tmp_path), name), name, sha(i), 10) for i, name in enumerate(names)]
    if with_failures:
        done.errors.update({sha(n + i): {"code": "decode_error", "message": "not an image"} for i in range(100)})
        files += [ImageFile(f"{tmp_path}/bad{i}.jpg", f"bad{i}.jpg", sha(n + i), 10) for i in range(100)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    frame = rank_files(files, files[0], done, get_metric("cosine"))
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    assert len(frame) == len(files) - 1
    assert peak / n < 600, f"{peak / n:.0f} bytes per file at the peak"
