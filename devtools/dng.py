"""A camera RAW made from a photo: a DNG that LibRaw reads as it reads a camera's, for tests.

No package on the registries we can reach ships a real camera RAW file (see docs/ARCHITECTURE.md,
"An image format"), so the tests write one: a Bayer mosaic (RGGB, 14-bit linear light) sampled from
a photo, laid out as Adobe's DNG Converter lays out its files: IFD0 is a small RGB thumbnail
(what a plain TIFF reader shows), a SubIFD holds the mosaic and, when asked, another SubIFD holds a
full-size JPEG preview, as cameras embed one. The colour matrix is sRGB's, so LibRaw's full decode
(demosaic, white balance, sRGB) gives back the photo's colours, a little brighter (its auto-brightness).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

WHITE = 16383  # 14-bit, as most cameras record
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
# TIFF field types: the type code and the struct format of one value
BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = (1, "B"), (2, "B"), (3, "H"), (4, "I"), (5, "II"), (10, "ii")


def dng(photo: Image.Image, preview: bool = True, orientation: int = 1, thumbnail_side: int = 128) -> bytes:
    """``photo`` (RGB, as stored) as a DNG; ``orientation`` is the TIFF/EXIF tag (6: rotate 90 clockwise
    to display); ``preview``: embed the photo as a full-size JPEG preview too; ``thumbnail_side``: the
    long side of IFD0's uncompressed RGB thumbnail."""
    photo = photo.convert("RGB")
    thumb = photo.copy()
    thumb.thumbnail((thumbnail_side, thumbnail_side))
    ifds = [_raw_ifd(photo.crop((0, 0, photo.width & ~1, photo.height & ~1)))]  # whole 2x2 Bayer cells
    if preview:
        ifds.append(_preview_ifd(photo))
    return _tiff(_thumbnail_ifd(thumb, orientation), ifds)


def _mosaic(photo: Image.Image) -> np.ndarray:
    """Each pixel keeps one channel, R G / G B, in linear light."""
    srgb = np.asarray(photo, dtype=np.float64) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty(linear.shape[:2])
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    return np.round(mosaic * WHITE).astype("<u2")


def _thumbnail_ifd(thumb: Image.Image, orientation: int) -> tuple[dict, bytes]:
    tags = {
        254: (LONG, [1]),  # NewSubFileType: a reduced image
        256: (LONG, [thumb.width]), 257: (LONG, [thumb.height]), 258: (SHORT, [8, 8, 8]), 259: (SHORT, [1]),
        262: (SHORT, [2]), 271: (ASCII, b"imgsim\0"), 272: (ASCII, b"synthetic DNG\0"), 274: (SHORT, [orientation]),
        277: (SHORT, [3]), 278: (LONG, [thumb.height]), 284: (SHORT, [1]),
        50706: (BYTE, [1, 4, 0, 0]), 50707: (BYTE, [1, 1, 0, 0]),  # DNGVersion, DNGBackwardVersion
        50708: (ASCII, b"imgsim synthetic DNG\0"),  # UniqueCameraModel
        50721: (SRATIONAL, [(round(v * 10000), 10000) for row in XYZ_TO_SRGB for v in row]),  # ColorMatrix1
        50728: (RATIONAL, [(1, 1)] * 3),  # AsShotNeutral: white is white
        50778: (SHORT, [21]),  # CalibrationIlluminant1: D65
    }  # fmt: skip
    return tags, thumb.tobytes()


def _raw_ifd(photo: Image.Image) -> tuple[dict, bytes]:
    tags = {
        254: (LONG, [0]),  # the main image
        256: (LONG, [photo.width]), 257: (LONG, [photo.height]), 258: (SHORT, [16]), 259: (SHORT, [1]),
        262: (SHORT, [32803]),  # PhotometricInterpretation: colour filter array
        277: (SHORT, [1]), 278: (LONG, [photo.height]), 284: (SHORT, [1]),
        33421: (SHORT, [2, 2]), 33422: (BYTE, [0, 1, 1, 2]),  # CFARepeatPatternDim, CFAPattern: RGGB
        50714: (LONG, [0]), 50717: (LONG, [WHITE]),  # BlackLevel, WhiteLevel
    }  # fmt: skip
    return tags, _mosaic(photo).tobytes()


def _preview_ifd(photo: Image.Image) -> tuple[dict, bytes]:
    buffer, exif = io.BytesIO(), Image.Exif()
    exif[271], exif[272] = "imgsim", "synthetic DNG"  # Make, Model: a camera's preview names no orientation
    photo.save(buffer, "JPEG", quality=92, exif=exif)
    tags = {
        254: (LONG, [1]), 256: (LONG, [photo.width]), 257: (LONG, [photo.height]), 258: (SHORT, [8, 8, 8]),
        259: (SHORT, [7]), 262: (SHORT, [6]),  # JPEG, YCbCr
        277: (SHORT, [3]), 278: (LONG, [photo.height]), 284: (SHORT, [1]), 50971: (LONG, [2]),  # PreviewColorSpace: sRGB
    }  # fmt: skip
    return tags, buffer.getvalue()


def _tiff(first: tuple[dict, bytes], sub: list[tuple[dict, bytes]]) -> bytes:
    """A little-endian TIFF: IFD0 ``first`` pointing (tag 330, SubIFDs) at the ``sub`` IFDs; each IFD's
    pixels in one strip (tags 273 StripOffsets, 279 StripByteCounts). The directories come first and
    the pixels after them, as cameras write: a truncated file keeps its directories."""
    images = [first, *sub]
    directories = [first[0] | {330: (LONG, [0] * len(sub))}, *(dict(tags) for tags, _ in sub)]
    for tags, (_, pixels) in zip(directories, images):
        tags |= {273: (LONG, [0]), 279: (LONG, [len(pixels)])}
    at, ifd_at, pixels_at = 8, [], []
    for tags in directories:  # an IFD's length does not depend on the offsets written in it
        ifd_at.append(at)
        at += len(_ifd(tags, at))
    for _, pixels in images:
        pixels_at.append(at)
        at += len(pixels) + len(pixels) % 2
    directories[0][330] = (LONG, ifd_at[1:])
    out = bytearray(struct.pack("<2sHI", b"II", 42, ifd_at[0]))
    for tags, ifd, strip in zip(directories, ifd_at, pixels_at):
        tags[273] = (LONG, [strip])
        out += _ifd(tags, ifd)
    for _, pixels in images:
        out += pixels + b"\0" * (len(pixels) % 2)
    return bytes(out)


def _ifd(tags: dict, at: int) -> bytes:
    """One IFD written at offset ``at``: its entries in tag order, values over 4 bytes after it."""
    entries, extra = b"", b""
    extra_at = at + 2 + 12 * len(tags) + 4
    for tag in sorted(tags):
        (code, fmt), values = tags[tag]
        if code == ASCII[0]:
            value, count = values, len(values)
        else:
            flat = [v for pair in values for v in pair] if len(fmt) == 2 else list(values)
            value, count = struct.pack("<" + fmt[0] * len(flat), *flat), len(values)
        if len(value) <= 4:
            entries += struct.pack("<HHI", tag, code, count) + value.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, code, count, extra_at + len(extra))
            extra += value + b"\0" * (len(value) % 2)
    return struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + extra
