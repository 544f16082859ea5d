"""The folder walk (client.scan.candidate_files): which files count, in which order, as plain strings."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from client.scan import candidate_files

LAYOUT = ["a.jpg", "a-b.png", "a/x.jpg", "a/b/deep.heic", "B.JPG", "b.txt", "c/.hidden.jpg", ".cache/y.jpg",
          "c/z.NEF", "notes.md", "c/d/e/f.webp"]  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in LAYOUT:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    return root


def test_the_walk_lists_images_and_others_in_the_order_of_their_parts(folder: Path) -> None:
    images, others = candidate_files(folder, recursive=True)
    assert all(isinstance(p, str) for p in images + others)
    # what sorted(Path) gave before: a folder's files where its name sorts ("a/..." before "a-b.png")
    visible = [p for p in folder.rglob("*")
               if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)]  # fmt: skip
    expected = [str(p) for p in sorted(visible)]
    assert images == [p for p in expected if p in images] and others == [p for p in expected if p in others]
    assert sorted(images + others) == sorted(expected)
    assert [os.path.relpath(p, folder) for p in images] == [
        "B.JPG", "a/b/deep.heic", "a/x.jpg", "a-b.png", "a.jpg", "c/d/e/f.webp", "c/z.NEF"]  # fmt: skip
    assert [os.path.relpath(p, folder) for p in others] == ["b.txt", "notes.md"]


def test_without_recursive_only_the_folders_own_files(folder: Path) -> None:
    images, others = candidate_files(folder, recursive=False)
    assert [os.path.basename(p) for p in images] == ["B.JPG", "a-b.png", "a.jpg"]
    assert [os.path.basename(p) for p in others] == ["b.txt", "notes.md"]


def test_links_to_files_count_and_links_to_folders_are_not_followed(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "far.jpg").write_bytes(b"far")
    (folder / "linked.jpg").symlink_to(elsewhere / "far.jpg")
    (folder / "linked-folder").symlink_to(elsewhere, target_is_directory=True)
    (folder / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    images, _ = candidate_files(folder, recursive=True)
    names = [os.path.relpath(p, folder) for p in images]
    assert "linked.jpg" in names and not any(n.startswith("linked-folder") or n == "dangling.jpg" for n in names)


def test_a_folder_that_cannot_be_listed_is_named_and_the_rest_is_walked(folder: Path, monkeypatch, capsys) -> None:
    scandir = os.scandir

    def refused(path: str):  # what a folder of mode 000 does to anyone but root
        if path == str(folder / "c"):
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    images, _ = candidate_files(folder, recursive=True)
    assert "a.jpg" in map(os.path.basename, images) and "z.NEF" not in map(os.path.basename, images)
    assert f"{folder / 'c'}: cannot list it (Permission denied)" in capsys.readouterr().err


def test_a_folder_that_vanished_is_named_and_nothing_is_listed(tmp_path: Path, capsys) -> None:
    assert candidate_files(tmp_path / "gone", recursive=True) == ([], [])
    assert f"{tmp_path / 'gone'}: cannot list it" in capsys.readouterr().err


def test_each_file_of_a_large_folder_costs_its_path_string_and_little_more(tmp_path: Path) -> None:
    """A million Paths held ~500 bytes each; the walk keeps one string per file (issue 12, bounded memory)."""
    n = 5000
    for i in range(n):
        (tmp_path / f"{i // 1000:04d}").mkdir(exist_ok=True)
        (tmp_path / f"{i // 1000:04d}" / f"IMG_{i:07d}.jpg").touch()
    tracemalloc.start()
    images, _ = candidate_files(tmp_path, recursive=True)
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(images) == n
    per_file = kept / n - len(images[0])  # beyond the path's own characters
    assert per_file < 120, f"{per_file:.0f} bytes per file beyond its path"
