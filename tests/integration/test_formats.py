"""HEIC, AVIF and camera RAW against a real TorchServe: each embeds like the photo it was made from,
and client/rank.py ranks a folder of them (its HTML report shows their thumbnails in Chromium)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests

from devtools import IMAGES
from devtools.images import camera_raw, phone_format
from tests.conftest import LITE
from tests.support.browser import rendered_images
from tests.support.cli import json_frame, run_client

PHOTOS = ("coffee.jpg", "cat.png", "guitar.jpg")
# Each format's bytes of a packaged photo; orientation 6: stored on its side, to be turned upright
FORMATS = {
    "heic": lambda name: phone_format("HEIF", name),
    "heic_sideways": lambda name: phone_format("HEIF", name, exif_rotated=True),
    "avif": lambda name: phone_format("AVIF", name),
    "avif_sideways": lambda name: phone_format("AVIF", name, exif_rotated=True),
    "raw_preview": lambda name: camera_raw(name),
    "raw_preview_sideways": lambda name: camera_raw(name, orientation=6),
}


def reply(server, data: bytes) -> tuple[str, np.ndarray]:
    """(top-1 label, embedding) the server gives ``data``."""
    response = requests.post(server.predict_url(LITE), data=data, headers=server.headers(), timeout=300)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    return body["predictions"][0]["label"], np.asarray(body["embedding"], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def originals(server) -> dict[str, tuple[str, np.ndarray]]:
    return {name: reply(server, (IMAGES / name).read_bytes()) for name in PHOTOS}


@pytest.mark.parametrize("kind", sorted(FORMATS))
@pytest.mark.parametrize("name", PHOTOS)
def test_a_photo_in_each_format_gets_the_photos_label_and_embedding(server, originals, kind, name):
    label, vector = reply(server, FORMATS[kind](name))
    original_label, original = originals[name]
    assert label == original_label
    assert cosine(vector, original) >= 0.98
    assert all(cosine(vector, other) < 0.6 for photo, (_, other) in originals.items() if photo != name)


@pytest.mark.parametrize("name", PHOTOS)
def test_a_camera_raw_without_a_preview_is_developed_and_embeds_close_to_the_photo(server, originals, name):
    """LibRaw's demosaic and its automatic brightness are not the photo's own rendering, so the bar
    is lower than for a preview (0.96-0.99 seen); the label stays the photo's."""
    label, vector = reply(server, camera_raw(name, preview=False))
    original_label, original = originals[name]
    assert label == original_label
    assert cosine(vector, original) >= 0.95
    assert all(cosine(vector, other) < 0.6 for photo, (_, other) in originals.items() if photo != name)


def test_rank_ranks_a_folder_of_heic_avif_and_raw_files(server, tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    files = {
        "coffee.heic": phone_format("HEIF", "coffee.jpg", exif_rotated=True),
        "coffee.avif": phone_format("AVIF", "coffee.jpg"),
        "coffee.dng": camera_raw("coffee.jpg", orientation=6),
        "coffee_developed.nef": camera_raw("coffee.jpg", preview=False),  # the server goes by bytes, not suffix
        "guitar.heif": phone_format("HEIF", "guitar.jpg"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    shutil.copy(IMAGES / "cat.png", folder / "cat.png")
    page = tmp_path / "report.html"
    result = run_client("rank", "--no-store", "--format", "json", "--images_folder", str(folder), "--ref_image",
                        str(IMAGES / "coffee.jpg"), "--html", str(page), "--top-k", "6", server=server)  # fmt: skip
    rows = {row["file"]: row for row in json_frame(result).to_dict("records")}
    assert set(rows) == {*files, "cat.png"}
    assert "ranked 6, skipped 0 (not images), failed 0" in result.stderr
    order = sorted(rows, key=lambda name: -rows[name]["score"])
    assert set(order[:4]) == {"coffee.heic", "coffee.avif", "coffee.dng", "coffee_developed.nef"}
    assert rows["coffee.heic"]["label"] == rows["coffee.dng"]["label"] == rows["coffee.avif"]["label"]
    ok, total = rendered_images(page, tmp_path / "chromium")
    assert total == 7 and ok == total  # the reference and all six: thumbnails a browser shows
