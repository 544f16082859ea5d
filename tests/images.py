"""Awkward images made on the fly: every format, mode and trap the decoder must handle."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

from PIL import Image

from tests.server import REPO

PHOTOS = REPO / "images"


def photo(name: str = "cat.png") -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG of width x height black 1-bit pixels: a few hundred KB that inflate to gigabytes."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(min(height, 2000))) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A landscape 64x32 JPEG whose EXIF says 'rotate 90 clockwise to display' (orientation 6)."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif)


def sixteen_bit_png() -> bytes:
    image = Image.new("I;16", (32, 32))
    image.putdata([65535 if (x // 4) % 2 else 0 for x in range(32 * 32)])
    return encode(image, "PNG")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return encode(image, "PNG", transparency=0)  # index 0 (red) fully transparent


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
