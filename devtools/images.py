"""Awkward images made on the fly: every format, mode and trap the decoder and the server must handle.

Nothing here is committed as a binary: each image is built from the photos in images/
(or from nothing) when it is asked for. Each kind is made here once; a name says what
the image shows, so the small synthetic ones (``blue_exif_rotated_jpeg``) and the real
photos made awkward (``cat_exif_rotated_jpeg``) are never confused.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin

from client.readiness import probe_image
from devtools import IMAGES
from devtools.dng import dng


def photo(name: str = "cat.png") -> Image.Image:
    """A photo of images/, as RGB."""
    return Image.open(IMAGES / name).convert("RGB")


def repo_photos() -> list[Path]:
    """Every photo in images/, in name order."""
    return sorted(p for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def tar_of(files: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT, extra=(), global_headers=None) -> bytes:
    """A tar request body, as client/ sends and ``tar cf -`` makes; ``extra`` members (folders...) first."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, pax_headers=global_headers) as archive:
        for info in extra:
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- small synthetic images, one trap each ------------------------------------------------------


def one_pixel() -> bytes:
    """A 1x1 PNG: the smallest image the server serves, the very one the readiness check sends."""
    return probe_image()


def blue_exif_rotated_jpeg() -> bytes:
    """A landscape 64x32 blue JPEG whose EXIF says 'rotate 90 clockwise to display' (orientation 6)."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif)


def striped_sixteen_bit_png() -> bytes:
    """32x32 16-bit grayscale (mode I;16), stripes 4 px wide of 0 and 65535."""
    image = Image.new("I;16", (32, 32))
    image.putdata([65535 if (x // 4) % 2 else 0 for x in range(32 * 32)])
    return encode(image, "PNG")


def red_palette_with_transparency() -> bytes:
    """A 16x16 palette PNG of colour 0 (red), which is fully transparent."""
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return encode(image, "PNG", transparency=0)


def rgb_animated_gif() -> bytes:
    """Three 32x32 frames: red, green, blue."""
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG of width x height black 1-bit pixels: a few hundred KB that inflate to gigabytes."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(min(height, 2000))) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


# --- bytes that are not an image, or not a whole one ---------------------------------------------


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
    """The first half of coffee_jpeg()."""
    data = coffee_jpeg()
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    """The first half of cat_png()."""
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


# --- real photos in awkward encodings: each embeds like the photo it was made from -----------------


@lru_cache
def photo_over_40mp() -> bytes:
    """A real photo upscaled to 8000 x 5336 (42.7 MP): large, but what a good camera makes."""
    return encode(photo("coffee.jpg").resize((8000, 5336), Image.BILINEAR), "JPEG", quality=85)


def cat_sixteen_bit_png() -> bytes:
    """cat.png as 16-bit grayscale (PNG mode I;16), its full 0..65535 range used."""
    gray = np.asarray(photo("cat.png").convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def cmyk_jpeg() -> bytes:
    """coffee.jpg as a CMYK JPEG."""
    return encode(photo("coffee.jpg").convert("CMYK"), "JPEG", quality=90)


def cat_palette_with_transparency() -> bytes:
    """cat.png quantised to 256 colours, palette entry 0 fully transparent."""
    return encode(photo("cat.png").quantize(256), "PNG", transparency=0)


def photos_animated_gif() -> bytes:
    """Three real photos as the frames of an animation: the first frame (cat) is the one used."""
    frames = [photo(name).resize((451, 300)) for name in ("cat.png", "coffee.jpg", "guitar.jpg")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


@lru_cache
def cat_exif_rotated_jpeg() -> bytes:
    """cat.png stored on its side, as a phone held upright stores it, with EXIF orientation 6
    ("rotate 90 degrees clockwise to display"): decoded upright it is the cat again."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo("cat.png").transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)


@lru_cache
def phone_format(fmt: str, name: str = "cat.png", exif_rotated: bool = False) -> bytes:
    """A packaged photo as a phone saves it: ``fmt`` "HEIF" (an iPhone's HEIC, via pillow-heif) or
    "AVIF"; ``exif_rotated``: stored on its side with EXIF orientation 6, as cat_exif_rotated_jpeg()."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    image, exif = photo(name).convert("RGB"), Image.Exif()
    if exif_rotated:
        image, exif[0x0112] = image.transpose(Image.Transpose.ROTATE_90), 6
    return encode(image, fmt, quality=90, exif=exif.tobytes())


def truncated_phone_format(fmt: str) -> bytes:
    """The first half of phone_format(fmt)."""
    data = phone_format(fmt)
    return data[: len(data) // 2]


def corrupt_phone_format(fmt: str) -> bytes:
    """phone_format(fmt) with 64 bytes of its box structure (the metadata after the ftyp box) overwritten:
    damaged coded pixels are concealed by the decoder, as in a JPEG, but a damaged header cannot be read."""
    data = bytearray(phone_format(fmt))
    data[32:96] = b"\xff" * 64
    return bytes(data)


@lru_cache
def camera_raw(name: str = "coffee.jpg", preview: bool = True, orientation: int = 1) -> bytes:
    """A packaged photo as a camera RAW: a DNG with a Bayer mosaic of it and, with ``preview``, the
    full-size JPEG preview cameras embed. Made, not found: no package we can reach ships a RAW
    (devtools/dng.py). ``orientation`` 6: stored on its side, to be turned 90 degrees clockwise."""
    image = photo(name)
    if orientation == 6:
        image = image.transpose(Image.Transpose.ROTATE_90)
    return dng(image, preview=preview, orientation=orientation)


def truncated_camera_raw() -> bytes:
    """The first half of camera_raw(): its directories whole, its sensor data cut."""
    data = camera_raw()
    return data[: len(data) // 2]


def corrupt_camera_raw() -> bytes:
    """camera_raw() with the directory of its sensor data (its first SubIFD) overwritten."""
    data = bytearray(camera_raw())
    ifd = TiffImagePlugin.ImageFileDirectory_v2(bytes(data[:8]))
    stream = io.BytesIO(bytes(data))
    stream.seek(ifd.next)
    ifd.load(stream)
    sensor = ifd[330][0]  # SubIFDs
    data[sensor : sensor + 64] = b"\xff" * 64
    return bytes(data)


def cat_upright_jpeg() -> bytes:
    """What cat_exif_rotated_jpeg() shows once turned upright, for comparing embeddings."""
    return encode(photo("cat.png"), "JPEG", quality=90)
