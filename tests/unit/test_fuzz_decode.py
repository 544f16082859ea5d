"""Fuzzing the decode path (bytes -> RGB image -> uint8 crop) and tar request bodies with hypothesis, bounded in time.

Whatever the bytes, ``decode_image`` + ``crop_uint8`` either give a (3, crop, crop)
uint8 tensor or raise ``DecodeError``; never another exception, never a hang.
Inputs are real encodings (every accepted format, and the awkward modes) mutated
byte-wise, plus plain random bytes. CI runs a fixed, derandomised budget (about
20 s on 2 cores); ``IMGSIM_FUZZ_EXAMPLES=20000`` fuzzes longer with fresh randomness.
"""

from __future__ import annotations

import faulthandler
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from devtools import REPO
from devtools.dng import dng
from devtools.images import (
    blue_exif_rotated_jpeg,
    encode,
    photo,
    red_palette_with_transparency,
    rgb_animated_gif,
    striped_sixteen_bit_png,
    tar_of,
)
from imgsim.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from imgsim.models import get_spec
from imgsim.payload import parse_request
from imgsim.preprocess import crop_uint8

# hypothesis caches what it learns in ./.hypothesis; keep the checkout clean
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "imgsim-hypothesis")
SPEC = get_spec("resnet18")
EXAMPLES = int(os.environ.get("IMGSIM_FUZZ_EXAMPLES", "0"))  # 0: the fixed CI budget
PER_EXAMPLE_S = 10.0  # far above the ~10 ms an example takes: only a real hang trips it


def _seeds() -> dict[str, bytes]:
    small = photo("cat.png").resize((48, 32))
    seeds = {fmt: encode(small, fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")}
    seeds["progressive_jpeg"] = encode(small, "JPEG", progressive=True)
    seeds["rgba_png"] = encode(small.convert("RGBA"), "PNG")
    seeds["cmyk_jpeg"] = encode(small.convert("CMYK"), "JPEG")
    seeds["lossless_webp"] = encode(small, "WEBP", lossless=True)
    seeds["deflate_tiff"] = encode(small, "TIFF", compression="tiff_adobe_deflate")
    seeds["exif_jpeg"] = blue_exif_rotated_jpeg()
    exif = Image.Exif()
    exif[0x0112] = 8  # EXIF orientation outside JPEG: PNG's eXIf chunk, WebP's EXIF chunk
    seeds["exif_png"] = encode(small, "PNG", exif=exif)
    seeds["exif_webp"] = encode(small, "WEBP", exif=exif)
    seeds["two_page_tiff"] = encode(small, "TIFF", save_all=True, append_images=[small.rotate(90)])
    seeds["animated_gif"] = rgb_animated_gif()
    seeds["palette_png"] = red_palette_with_transparency()
    seeds["sixteen_bit_png"] = striped_sixteen_bit_png()
    seeds["dng_with_preview"] = dng(photo("cat.png").resize((384, 256)), orientation=6)
    seeds["dng_developed"] = dng(small, preview=False)
    return seeds


SEEDS = _seeds()


def _tar_seeds() -> dict[str, bytes]:
    folder = tarfile.TarInfo("photos")
    folder.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("photos/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
    files = {"photos/a.jpg": SEEDS["JPEG"], "photos/" + "long/" * 25 + "b.png": SEEDS["PNG"]}
    return {
        "pax": tar_of(files, extra=[folder, link], global_headers={"comment": "x"}),
        "gnu": tar_of(files, tarfile.GNU_FORMAT, extra=[folder, link]),
        "ustar": tar_of({"a.jpg": SEEDS["JPEG"], "b.gif": SEEDS["GIF"]}, tarfile.USTAR_FORMAT),
    }


TAR_SEEDS = _tar_seeds()


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        # half the edits land in the first 64 bytes: headers and sizes are where parsers trip
        end = len(data) if draw(st.booleans()) else min(64, len(data))
        at = draw(st.integers(0, end - 1))
        edit = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "repeat"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@contextmanager
def time_limit(seconds: float):
    """Ends the process loudly, every thread's traceback on stderr, if the block runs over ``seconds``:
    a hung decoder cannot stall the suite. A watchdog thread, not a signal: a SIGALRM raising in
    Python segfaulted pytest once OpenVINO engines had run in the process (tests/unit/test_engines.py)."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def decode_and_crop(data: bytes) -> None:
    """The property: a crop tensor or a DecodeError, within the time limit."""
    with time_limit(PER_EXAMPLE_S), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about corrupt EXIF; the outcome is what counts
        try:
            image = decode_image(data, DEFAULT_MAX_PIXELS, draft_side=SPEC.resize_size)
        except DecodeError as error:
            assert error.code and error.message and 400 <= error.status < 500
            return
        assert image.mode == "RGB" and min(image.size) >= 1
        tensor = crop_uint8(image, SPEC)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, SPEC.input_size, SPEC.input_size)


def fuzz_settings(ci_examples: int):
    return settings(
        max_examples=EXAMPLES or ci_examples,
        derandomize=not EXAMPLES,  # CI: the same examples every run, so a failure is never flaky
        deadline=None,  # time is bounded by time_limit(), not by hypothesis' noisy per-example deadline
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz_settings(1500)
@given(mutated(SEEDS))
def test_mutated_images_decode_or_raise_decode_error(data):
    decode_and_crop(data)


@fuzz_settings(300)
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_decode_error(data):
    decode_and_crop(data)


@fuzz_settings(1000)
@given(mutated(TAR_SEEDS))
def test_mutated_tar_bodies_give_named_images_or_reasons(data):
    """Whatever the archive, a request error or a list of members, each with bytes from the body
    or a reason; never another exception, never more than the limit."""
    with time_limit(PER_EXAMPLE_S):
        parsed = parse_request({"body": data}, max_images=64)
    if parsed.error is not None:
        assert parsed.error.code and parsed.error.message and 400 <= parsed.error.status < 500
    elif parsed.single:  # the mutation removed the tar magic: one raw image, as sent
        assert [image.data for image in parsed.images] == [data]
    else:
        assert 1 <= len(parsed.images) <= 64
        for image in parsed.images:
            assert len(image.data) <= len(data)
            assert image.error is None or (image.error.code and image.error.message and not image.data)


@pytest.mark.parametrize("name", sorted(TAR_SEEDS))
def test_every_tar_seed_reads_its_two_images(name):
    images = parse_request({"body": TAR_SEEDS[name]}, max_images=64).images
    assert [i.data for i in images if i.error is None] == [SEEDS["JPEG"], SEEDS["PNG" if name != "ustar" else "GIF"]]


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes(name):
    """The mutations start from images that really decode, so a rejection is the mutation's doing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = decode_image(SEEDS[name], draft_side=SPEC.resize_size)
    assert crop_uint8(image, SPEC).shape == (3, SPEC.input_size, SPEC.input_size)


def test_the_time_limit_stops_a_slow_example():
    slow = "from tests.unit.test_fuzz_decode import time_limit\nwith time_limit(0.5):\n    while True:\n        pass\n"
    started = time.monotonic()
    ended = subprocess.run([sys.executable, "-c", slow], cwd=REPO, capture_output=True, text=True, timeout=120)
    # the dump names the loop: its "while" (line 3) or its body (line 4), wherever the timer found it
    assert ended.returncode != 0 and "Timeout" in ended.stderr, ended.stderr
    assert re.search(r'<string>", line [34] in <module>', ended.stderr), ended.stderr
    assert time.monotonic() - started < 60  # the import takes seconds; the loop would run forever


def test_an_extreme_aspect_ratio_does_not_make_a_huge_intermediate(monkeypatch):
    """A 1 x 60000 PNG is ~1 KB and under the pixel limit; resizing all of it to a 256-pixel
    short side would be a 256 x 15,360,000 image (11.8 GB). Preprocessing must only ever
    build what the crop needs."""
    limit = 4 * SPEC.resize_size * SPEC.resize_size * 16  # generous: any sane intermediate fits
    real_resize = Image.Image.resize

    def bounded_resize(self, size, *args, **kwargs):
        assert size[0] * size[1] <= limit, f"preprocessing asked PIL for a {size[0]}x{size[1]} image"
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    for size in [(1, 60000), (60000, 1), (3, 20000)]:
        image = decode_image(encode(Image.new("RGB", size, (10, 200, 30)), "PNG"))
        assert crop_uint8(image, SPEC).shape == (3, SPEC.input_size, SPEC.input_size)
