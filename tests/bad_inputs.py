"""The bad-input corpus: every kind of upload the server must survive, generated on demand.

Nothing here is committed as a binary: each case builds its bytes from the photos in
images/ (or from nothing). tests/test_bad_input.py sends every case to a real
TorchServe and checks the outcome that docs/BAD_INPUT.md documents for it.

    python -m tests.bad_inputs --list            # the cases and what each one is
    python -m tests.bad_inputs --out /tmp/bad    # one file per image case, to try by hand:
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/predictions/resnet18-embed -T /tmp/bad/bomb.png
"""

from __future__ import annotations

import argparse
import base64
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as `python tests/bad_inputs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.images import PHOTOS, encode, photo, png_bomb  # noqa: E402

REQUEST_SIZE_LIMIT = 67108864  # max_request_size in config/config.properties
MAX_IMAGES = 64  # max_images_per_request in config/model-config.yaml
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
    return [(name, (PHOTOS / name).read_bytes()) for name in GOOD]


def image_case(name: str, what: str, filename: str, make: Callable[[], bytes]) -> Case:
    """An image file as a user would upload it: alone as a raw body, beside good ones as one multipart part."""

    def beside() -> Request:
        first, second = good_images()
        return Request(files=[_part(*first), _part(filename, make()), _part(*second)])

    return Case(name, what, lambda: Request(data=make()), beside, (filename, make))


def _part(name: str, data: bytes) -> tuple[str, tuple[str, bytes]]:
    return (name, (name, data))


# --- the image files ------------------------------------------------------------------------------


def random_bytes() -> bytes:
    return np.random.default_rng(5).bytes(4096)


def text_as_jpeg() -> bytes:
    return b"Shopping list: milk, eggs, bread.\nNot a photo, whatever the file name says.\n" * 20


def html_as_png() -> bytes:
    return b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=cat.png></body></html>\n"


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        b'<circle cx="32" cy="32" r="30" fill="red"/></svg>\n'
    )


@lru_cache
def coffee_jpeg() -> bytes:
    return encode(photo("coffee.jpg"), "JPEG", quality=90)


@lru_cache
def cat_png() -> bytes:
    return encode(photo("cat.png"), "PNG")


def truncated_jpeg() -> bytes:
    data = coffee_jpeg()
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = cat_png()
    return data[: len(data) // 2]


def png_with_bad_crc(chunk: bytes) -> bytes:
    """cat.png with the CRC of its first ``chunk`` chunk inverted (the data itself intact)."""
    data = bytearray(cat_png())
    at = data.index(chunk)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    crc = at + 4 + length
    data[crc : crc + 4] = bytes(b ^ 0xFF for b in data[crc : crc + 4])
    return bytes(data)


def one_pixel() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


@lru_cache
def photo_over_40mp() -> bytes:
    """A real photo upscaled to 8000 x 5336 (42.7 MP): large, but what a good camera makes."""
    return encode(photo("coffee.jpg").resize((8000, 5336), Image.BILINEAR), "JPEG", quality=85)


def sixteen_bit_png() -> bytes:
    """A real photo as 16-bit grayscale (PNG mode I;16), its full 0..65535 range used."""
    gray = np.asarray(photo("cat.png").convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(photo("coffee.jpg").convert("CMYK"), "JPEG", quality=90)


def palette_with_transparency() -> bytes:
    """cat.png quantised to 256 colours, palette entry 0 fully transparent."""
    return encode(photo("cat.png").quantize(256), "PNG", transparency=0)


def animated_gif() -> bytes:
    """Three real photos as the frames of an animation: the first frame (cat) is the one used."""
    frames = [photo(name).resize((451, 300)) for name in ("cat.png", "coffee.jpg", "guitar.jpg")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


@lru_cache
def exif_rotated_jpeg() -> bytes:
    """cat.png stored on its side, as a phone held upright stores it, with EXIF orientation 6
    ("rotate 90 degrees clockwise to display"): decoded upright it is the cat again."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo("cat.png").transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)


def upright_jpeg() -> bytes:
    """What exif_rotated_jpeg() shows once turned upright, for comparing embeddings."""
    return encode(photo("cat.png"), "JPEG", quality=90)


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
    image_case("sixteen_bit_png", "a 16-bit grayscale PNG photo", "gray16.png", sixteen_bit_png),
    image_case("cmyk_jpeg", "a CMYK JPEG photo", "print.jpg", cmyk_jpeg),
    image_case(
        "palette_transparency", "a palette PNG with a transparent colour", "palette.png", palette_with_transparency
    ),
    image_case("animated_gif", "a 3-frame animated GIF", "clip.gif", animated_gif),
    image_case("exif_rotated_jpeg", "a JPEG stored sideways with EXIF orientation 6", "phone.jpg", exif_rotated_jpeg),
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
