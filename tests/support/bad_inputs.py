"""The bad-input corpus: every kind of upload the server must survive, generated on demand.

Nothing here is committed as a binary: each case builds its bytes from the photos in
images/ (or from nothing) with devtools/images.py, where each image kind is made.
tests/integration/test_bad_input.py sends every case to a real TorchServe and checks
the outcome that docs/BAD_INPUT.md documents for it. From the repository root:

    python -m tests.support.bad_inputs --list            # the cases and what each one is
    python -m tests.support.bad_inputs --out /tmp/bad    # one file per image case, to try by hand:
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/predictions/resnet18-embed -T /tmp/bad/bomb.png
"""

from __future__ import annotations

import argparse
import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from devtools import IMAGES
from devtools.config import handler_settings, server_settings
from devtools.images import (
    cat_exif_rotated_jpeg,
    cat_palette_with_transparency,
    cat_sixteen_bit_png,
    cmyk_jpeg,
    corrupt_camera_raw,
    corrupt_phone_format,
    html_as_png,
    one_pixel,
    photo_over_40mp,
    photos_animated_gif,
    png_bomb,
    png_with_bad_crc,
    random_bytes,
    svg,
    text_as_jpeg,
    truncated_camera_raw,
    truncated_jpeg,
    truncated_phone_format,
    truncated_png,
)

REQUEST_SIZE_LIMIT = int(server_settings()["max_request_size"])
MAX_IMAGES = int(handler_settings()["max_images_per_request"])
GOOD = ("cat.png", "coffee.jpg")  # the good images sent beside each bad one


@dataclass
class Request:
    """One HTTP request's body, in the shape ``requests.post`` takes it."""

    data: bytes | None = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    json: dict | None = None


@dataclass(frozen=True)
class Case:
    """One row of docs/BAD_INPUT.md.

    ``alone`` is the case sent on its own; ``beside`` the same input between the good
    images in one request (None where the case is the request as a whole).
    """

    name: str
    what: str
    alone: Callable[[], Request]
    beside: Callable[[], Request] | None = None
    file: tuple[str, Callable[[], bytes]] | None = field(default=None)  # (filename, bytes) of an image case


def good_images() -> list[tuple[str, bytes]]:
    return [(name, (IMAGES / name).read_bytes()) for name in GOOD]


def image_case(name: str, what: str, filename: str, make: Callable[[], bytes]) -> Case:
    """An image file as a user would upload it: alone as a raw body, beside good ones as one multipart part."""

    def beside() -> Request:
        first, second = good_images()
        return Request(files=[_part(*first), _part(filename, make()), _part(*second)])

    return Case(name, what, lambda: Request(data=make()), beside, (filename, make))


def _part(name: str, data: bytes) -> tuple[str, tuple[str, bytes]]:
    return (name, (name, data))


# --- whole requests -------------------------------------------------------------------------------


def body_over_limit() -> Request:
    return Request(data=b"\xff\xd8\xff" + b"\x00" * (REQUEST_SIZE_LIMIT - 2))  # one byte over


def many_images(count: int) -> Request:
    small = one_pixel()
    return Request(files=[_part(f"{i:03d}.png", small) for i in range(count)])


def json_images(*items: str | dict) -> Request:
    return Request(json={"images": list(items)})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_bad_base64_beside() -> Request:
    (first, a), (second, b) = good_images()
    bad = {"name": "bad.b64", "data": "iVBORw0KGgo***not base64***"}
    return json_images({"name": first, "data": _b64(a)}, bad, {"name": second, "data": _b64(b)})


CASES: list[Case] = [
    image_case("empty", "a 0-byte image", "empty.jpg", lambda: b""),
    image_case("random_bytes", "4 KiB of random bytes named .jpg", "random.jpg", random_bytes),
    image_case("text_as_jpeg", "plain text named .jpg", "notes.jpg", text_as_jpeg),
    image_case("html_as_png", "an HTML page named .png", "page.png", html_as_png),
    image_case("svg", "an SVG drawing", "drawing.svg", svg),
    image_case("truncated_jpeg", "the first half of a JPEG photo", "half.jpg", truncated_jpeg),
    image_case("truncated_png", "the first half of a PNG photo", "half.png", truncated_png),
    image_case("truncated_heic", "the first half of a HEIC photo", "half.heic", lambda: truncated_phone_format("HEIF")),
    image_case(
        "corrupt_heic", "a HEIC photo with 64 bytes of its header boxes overwritten", "broken.heic",
        lambda: corrupt_phone_format("HEIF"),
    ),  # fmt: skip
    image_case(
        "truncated_avif", "the first half of an AVIF photo", "half.avif", lambda: truncated_phone_format("AVIF"),
    ),  # fmt: skip
    image_case(
        "corrupt_avif", "an AVIF photo with 64 bytes of its header boxes overwritten", "broken.avif",
        lambda: corrupt_phone_format("AVIF"),
    ),  # fmt: skip
    image_case("truncated_raw", "the first half of a camera RAW photo (DNG)", "half.dng", truncated_camera_raw),
    image_case(
        "corrupt_raw", "a camera RAW photo (DNG) whose sensor-data directory is overwritten", "broken.dng",
        corrupt_camera_raw,
    ),  # fmt: skip
    image_case(
        "png_bad_header_crc", "a PNG photo whose IHDR chunk CRC is wrong", "badcrc_header.png",
        lambda: png_with_bad_crc(b"IHDR"),
    ),  # fmt: skip
    image_case(
        "png_bad_data_crc", "a PNG photo whose IDAT chunk CRC is wrong (pixel data intact)", "badcrc_data.png",
        lambda: png_with_bad_crc(b"IDAT"),
    ),  # fmt: skip
    image_case("one_pixel", "a 1x1 PNG", "dot.png", one_pixel),
    image_case("png_bomb", "a 60000x60000 PNG of a few hundred KB (decompression bomb)", "bomb.png", png_bomb),
    image_case("photo_over_40mp", "a real 8000x5336 JPEG photo (42.7 MP)", "huge.jpg", photo_over_40mp),
    image_case("sixteen_bit_png", "a 16-bit grayscale PNG photo", "gray16.png", cat_sixteen_bit_png),
    image_case("cmyk_jpeg", "a CMYK JPEG photo", "print.jpg", cmyk_jpeg),
    image_case(
        "palette_transparency", "a palette PNG with a transparent colour", "palette.png", cat_palette_with_transparency
    ),
    image_case("animated_gif", "a 3-frame animated GIF", "clip.gif", photos_animated_gif),
    image_case(
        "exif_rotated_jpeg", "a JPEG stored sideways with EXIF orientation 6", "phone.jpg", cat_exif_rotated_jpeg
    ),
    Case(
        "json_invalid_base64", 'JSON {"images": [...]} with an item that is not base64',
        lambda: json_images("iVBORw0KGgo***not base64***"), json_bad_base64_beside,
    ),  # fmt: skip
    Case("json_invalid", "a JSON body that does not parse", lambda: Request(data=b'{"images": ["iVBOR')),
    Case("body_over_limit", "a raw body of max_request_size + 1 bytes (64 MiB + 1)", body_over_limit),
    Case("too_many_images", f"a multipart request with {MAX_IMAGES + 1} images", lambda: many_images(MAX_IMAGES + 1)),
    Case("max_images", f"a multipart request with exactly {MAX_IMAGES} images", lambda: many_images(MAX_IMAGES)),
]

BY_NAME = {case.name: case for case in CASES}


def write_corpus(out: Path) -> list[Path]:
    """One file per image case, named ``<case>--<filename>``; the request cases need an HTTP client."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for case in CASES:
        if case.file:
            filename, make = case.file
            path = out / f"{case.name}--{filename}"
            path.write_bytes(make())
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the image cases into this folder")
    parser.add_argument("--list", action="store_true", help="list the cases")
    args = parser.parse_args(argv)
    if args.list or not args.out:
        for case in CASES:
            print(f"{case.name:22} {case.what}")
    if args.out:
        for path in write_corpus(args.out):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
