"""The noisy corpora bench/throughput.py sends: files of the sizes real camera and phone JPEGs have."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from devtools.photos import noisy_camera_corpus, phone_corpus, pixels


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> list[Path]:
    return noisy_camera_corpus(3, seed=7, folder=tmp_path_factory.mktemp("noisy"))


def test_noisy_camera_photos_are_2_to_6_megapixels_and_weigh_what_a_cameras_do(three):
    assert len(three) == 3
    for file in three:
        assert 2.0e6 <= pixels(file) <= 6.0e6, file
        assert 0.6e6 <= file.stat().st_size <= 0.9e6, (file, file.stat().st_size)


def test_a_noisy_photo_is_the_same_bytes_for_its_seed_whatever_the_count(three, tmp_path):
    (one,) = noisy_camera_corpus(1, seed=7, folder=tmp_path)
    assert one.read_bytes() == three[0].read_bytes()
    (other,) = noisy_camera_corpus(1, seed=8, folder=tmp_path)  # another seed replaces the folder's photos
    assert other.read_bytes() != three[0].read_bytes()


def test_a_folder_that_holds_the_same_corpus_is_reused_unwritten(three):
    made = [f.stat().st_mtime_ns for f in three]
    again = noisy_camera_corpus(3, seed=7, folder=three[0].parent)
    assert again == three and [f.stat().st_mtime_ns for f in again] == made


def test_a_phone_photo_is_12_megapixels_3_to_5_mb_and_reproducible(tmp_path):
    (file,) = phone_corpus(1, seed=7, folder=tmp_path / "a")
    with Image.open(file) as image:
        assert image.format == "JPEG" and image.size in ((4000, 3000), (3000, 4000))
    assert 3.0e6 <= file.stat().st_size <= 5.0e6, file.stat().st_size
    (again,) = phone_corpus(1, seed=7, folder=tmp_path / "b")
    assert again.read_bytes() == file.read_bytes()
