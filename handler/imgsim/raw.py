"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, ORF, RW2, RAF, PEF, SRW...) through LibRaw (rawpy).

A RAW is read through the JPEG preview the camera embedded (decoded by the caller as any JPEG; LibRaw
writes the RAW's orientation into its EXIF), or, where there is none big enough, developed in full by
LibRaw, turned as the RAW says. Telling a RAW from other data costs nothing for JPEG,
PNG and the rest: only data with a RAW format's own magic bytes, or a TIFF whose first directory is
not the picture itself, is shown to LibRaw.
"""

from __future__ import annotations

import io

import numpy as np
import rawpy
from PIL import Image, TiffImagePlugin

# RAW formats with magic bytes of their own: RAF, ORF, RW2, CRW, X3F, MRW, IIQ (CR3 is ISO media: below)
RAW_MAGIC = (
    b"FUJIFILM", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"II\x1a\x00\x00\x00HEAPCCDR", b"FOVb", b"\x00MRM", b"IIII",
)  # fmt: skip
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
# What a plain TIFF's first directory holds (anything else there is a camera's: its sensor data,
# a compression of its own, a thumbnail that points on to the real image)
PLAIN_COMPRESSIONS = {1, 2, 3, 4, 5, 6, 7, 8, 32773, 32809, 32946, 34676, 34677, 34712, 34925, 50000, 50001}
PLAIN_PHOTOMETRICS = {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 32845}
NEW_SUBFILE_TYPE, COMPRESSION, PHOTOMETRIC, SUB_IFDS, DNG_VERSION = 254, 259, 262, 330, 50706


class RawError(Exception):
    """LibRaw took the data for a camera RAW but could not read it (damaged or truncated)."""


def camera_marks(data: bytes) -> str | None:
    """What the first bytes say: "raw" for a RAW format's own magic bytes, a DNG or a Canon CR2;
    "tiff" for a TIFF whose first directory is not the picture itself (a camera's RAW if LibRaw knows
    it); None for everything else, which never reaches LibRaw."""
    if data.startswith(RAW_MAGIC) or (data[4:8] == b"ftyp" and data[8:12] == b"crx "):
        return "raw"
    if not data.startswith(TIFF_MAGIC):
        return None
    if data[8:10] == b"CR":
        return "raw"
    ifd = _first_directory(data)
    if ifd is None:
        return None  # a damaged directory: PIL says so, as for any TIFF
    if DNG_VERSION in ifd:
        return "raw"
    subfile_type = _number(ifd, NEW_SUBFILE_TYPE, 0)
    plain = (
        SUB_IFDS not in ifd
        and subfile_type is not None
        and not subfile_type & 1  # bit 0: a reduced-resolution copy of another image
        and _number(ifd, COMPRESSION, 1) in PLAIN_COMPRESSIONS
        and _number(ifd, PHOTOMETRIC, 1) in PLAIN_PHOTOMETRICS
    )
    # LibRaw also opens some plain TIFFs (16-bit grayscale) as if they were a sensor's data
    return None if plain else "tiff"


def _number(ifd: TiffImagePlugin.ImageFileDirectory_v2, tag: int, default: int) -> int | None:
    """A tag's single integer value; None when a damaged directory gives it another type."""
    value = ifd.get(tag, default)
    return value if isinstance(value, int) else None


def _first_directory(data: bytes) -> TiffImagePlugin.ImageFileDirectory_v2 | None:
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = io.BytesIO(data)
        stream.seek(ifd.next)
        ifd.load(stream)
        return ifd
    except Exception:  # PIL raises struct.error, ValueError, SyntaxError... on a broken directory
        return None


class CameraRaw:
    """One RAW file opened by LibRaw: its headers parsed, no pixel decoded yet."""

    def __init__(self, raw: rawpy.RawPy):
        self._raw = raw

    @classmethod
    def open(cls, data: bytes) -> CameraRaw | None:
        """None when LibRaw does not know the data for a RAW (a TIFF of another kind)."""
        try:
            return cls(rawpy.imread(io.BytesIO(data)))
        except rawpy.LibRawFileUnsupportedError:
            return None
        except rawpy.LibRawError as exc:
            raise RawError(_reason(exc)) from None

    def __enter__(self) -> CameraRaw:
        return self

    def __exit__(self, *_) -> None:
        self._raw.close()

    @property
    def sensor_size(self) -> tuple[int, int]:
        """Width and height of the sensor data LibRaw would decode."""
        sizes = self._raw.sizes
        return sizes.raw_width, sizes.raw_height

    def preview_jpeg(self) -> bytes | None:
        """The biggest JPEG the camera embedded, or None where there is none. Bitmap thumbnails are
        left alone: rawpy hands a damaged one as an array bigger than its buffer, and reading that
        crashed the process (found by tests/unit/test_fuzz_decode.py); they are small ones anyway."""
        try:
            thumb = self._raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
            return None
        except rawpy.LibRawError as exc:
            raise RawError(f"its embedded preview cannot be read: {_reason(exc)}") from None
        return bytes(thumb.data) if thumb.format == rawpy.ThumbFormat.JPEG else None

    def develop(self, half_size: bool) -> Image.Image:
        """The sensor data demosaiced (``half_size``: one pixel per 2x2 cell, 4x faster), white-balanced
        as shot, in sRGB, turned upright."""
        try:
            return _image(self._raw.postprocess(half_size=half_size, use_camera_wb=True))
        except rawpy.LibRawError as exc:
            raise RawError(_reason(exc)) from None


def _image(pixels: np.ndarray) -> Image.Image:
    """LibRaw's (height, width, channels) uint8 array as an image: RGB, or L for a monochrome RAW."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or pixels.shape[2] == 3):
        raise RawError(f"LibRaw gave pixels of shape {pixels.shape} and type {pixels.dtype}")
    return Image.fromarray(pixels)


def _reason(exc: rawpy.LibRawError) -> str:
    """LibRaw's words for what went wrong (rawpy gives them as bytes)."""
    detail = exc.args[0] if exc.args else ""
    detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return f"{type(exc).__name__.removeprefix('LibRaw')}: {detail}".rstrip(": ")
