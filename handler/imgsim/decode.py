"""Bytes to an RGB PIL image, or a DecodeError that says what is wrong with the file."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL formats we accept (the JPEG plugin also opens phone cameras' multi-picture MPO files).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 100_000_000
Image.init()  # registers every plugin, so ``formats=`` below can name WebP and TIFF
# Our configurable limit (checked in _open from the header, before any pixel is decoded)
# replaces PIL's fixed one, which would otherwise refuse at its own threshold first.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class DecodeError(Exception):
    """One image could not be used. ``code`` is stable for programs, ``message`` is for people."""

    code: str
    message: str
    status: int = 400

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None) -> Image.Image:
    """Decodes ``data`` to an upright RGB image.

    ``draft_side``: for JPEG, let the decoder scale down by 1/2, 1/4 or 1/8 while
    decoding as long as the short side stays at least this many pixels (much
    cheaper than a full decode followed by a resize).
    """
    if not data:
        raise DecodeError("empty", "the image is empty (0 bytes)")
    image = _open(data, max_pixels)
    if draft_side and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DecodeError("corrupt_image", f"the {image.format} data is damaged or truncated ({exc})") from None
    return to_rgb(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """EXIF orientation applied. Damaged EXIF is metadata, not pixels: the image is kept as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # PIL raises SyntaxError, ValueError, struct.error... on a broken EXIF block
        return image


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        kind = _signature(data)
        if kind:  # PIL gives up on a damaged header (a bad IHDR checksum) the same way as on a PDF
            raise DecodeError("corrupt_image", f"the data starts like a {kind} but its header is damaged") from None
        raise DecodeError(
            "unsupported_format", "not a JPEG, PNG, WebP, GIF, BMP or TIFF image", 415
        ) from None
    except Exception as exc:
        raise DecodeError("corrupt_image", f"the image header cannot be read ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            "too_many_pixels",
            f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}",
            413,
        )
    if width < 1 or height < 1:
        raise DecodeError("corrupt_image", f"the image declares a size of {width}x{height}")
    return image


def _signature(data: bytes) -> str | None:
    """The accepted format whose magic bytes ``data`` starts with, if any."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"  # "BM" alone is too common a start for text: also require a known DIB header size
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: transparency over white, 16-bit scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _wide_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode != "F" or pixels.max(initial=0.0) > 1.0:
        pixels = pixels / 257.0  # 0..65535 onto 0..255
    else:
        pixels = pixels * 255.0
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))  # 2-D uint8: mode L
