"""The client's own look at local files (pHash, report thumbnails) reads HEIC, AVIF and camera RAW."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from client.commands.html_report import thumbnail_uri
from client.duplicates.phash import distance, phash_file
from client.image_files import open_image
from client.scan import candidate_files
from devtools import IMAGES
from devtools.images import camera_raw, phone_format

FILES = {
    "coffee.heic": lambda: phone_format("HEIF", "coffee.jpg", exif_rotated=True),
    "coffee.avif": lambda: phone_format("AVIF", "coffee.jpg", exif_rotated=True),
    "coffee.dng": lambda: camera_raw("coffee.jpg", orientation=6),
    "coffee.nef": lambda: camera_raw("coffee.jpg", preview=False, orientation=6),  # developed by LibRaw
}


@pytest.fixture
def folder(tmp_path):
    for name, make in FILES.items():
        (tmp_path / name).write_bytes(make())
    return tmp_path


def test_the_scan_takes_phone_formats_and_camera_raws_for_images(folder):
    images, others = candidate_files(folder, recursive=False)
    assert sorted(os.path.basename(p) for p in images) == sorted(FILES) and others == []


@pytest.mark.parametrize("name", sorted(FILES))
def test_phone_photos_and_raws_open_upright_and_hash_like_the_jpeg(folder, name):
    image = open_image(folder / name)
    assert image.width > image.height  # stored on its side, shown upright
    assert distance(phash_file(folder / name), phash_file(IMAGES / "coffee.jpg")) <= 4


@pytest.mark.parametrize("name", sorted(FILES))
def test_report_thumbnails_of_phone_photos_and_raws_are_jpegs(folder, name):
    uri = thumbnail_uri(folder / name)
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumbnail.format == "JPEG" and thumbnail.width > thumbnail.height
