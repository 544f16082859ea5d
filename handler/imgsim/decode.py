"""Bytes to an RGB PIL image, or a DecodeError that says what is wrong with the file."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from .raw import CameraRaw, RawError, camera_marks

# PIL formats we accept (the JPEG plugin also opens phone cameras' multi-picture MPO files).
# HEIF is a phone's HEIC (pillow-heif, libheif); AVIF is Pillow's own; camera RAWs go to LibRaw (raw.py).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
ACCEPTED_NAMES = "a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF or camera RAW image"
pillow_heif.register_heif_opener()
DEFAULT_MAX_PIXELS = 100_000_000
# A RAW's embedded image with a shorter side is a thumbnail (a DNG's 256x171, a NEF's 160x120),
# too coarse to stand for the photo: the RAW is developed in full instead.
MIN_PREVIEW_SIDE = 256
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
    cheaper than a full decode followed by a resize); a camera RAW developed from
    its sensor data is demosaiced at half size on the same condition.
    """
    if not data:
        raise DecodeError("empty", "the image is empty (0 bytes)")
    marks = camera_marks(data)  # None, without a look at LibRaw, for all but RAWs and camera TIFFs
    image = _decode_raw(data, marks, max_pixels, draft_side) if marks else None
    return image if image is not None else _decode(_open(data, max_pixels), draft_side)


def _decode(image: Image.Image, draft_side: int | None) -> Image.Image:
    """An opened image's pixels, upright and RGB."""
    if draft_side and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DecodeError("corrupt_image", f"the {image.format} data is damaged or truncated ({exc})") from None
    return to_rgb(_upright(image))


def _decode_raw(data: bytes, marks: str, max_pixels: int, draft_side: int | None) -> Image.Image | None:
    """A camera RAW: its embedded preview where it has one big enough, else its sensor data developed.
    None for a TIFF that LibRaw does not take for a RAW (PIL decodes it)."""
    try:
        camera = CameraRaw.open(data)
        if camera is None and marks == "raw":  # LibRaw reads nearly every camera's files: more likely damage
            raise RawError("LibRaw does not recognise it: damaged directories, or a camera LibRaw does not know")
        if camera is None:
            return None
        with camera:
            image = _raw_preview(camera, max_pixels, draft_side)
            if image is None:
                width, height = camera.sensor_size
                _check_pixels(width, height, max_pixels)  # before LibRaw unpacks a pixel
                image = camera.develop(half_size=bool(draft_side) and min(width, height) // 2 >= draft_side)
    except RawError as exc:
        raise DecodeError("corrupt_image", f"the camera RAW is damaged or truncated ({exc})") from None
    return to_rgb(image)


def _raw_preview(camera: CameraRaw, max_pixels: int, draft_side: int | None) -> Image.Image | None:
    """The RAW's embedded JPEG preview, decoded as any JPEG; None where it has none, or only a thumbnail."""
    jpeg = camera.preview_jpeg()
    if jpeg is None:
        return None
    image = _open(jpeg, max_pixels)
    return _decode(image, draft_side) if min(image.size) >= MIN_PREVIEW_SIDE else None


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
            article = "an" if kind[0] in "AEIOU" else "a"
            message = f"the data starts like {article} {kind} but its header is damaged"
            raise DecodeError("corrupt_image", message) from None
        raise DecodeError("unsupported_format", f"not {ACCEPTED_NAMES}", 415) from None
    except Exception as exc:
        raise DecodeError("corrupt_image", f"the image header cannot be read ({exc})") from None
    _check_pixels(*image.size, max_pixels)
    return image


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError(
            "too_many_pixels",
            f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}",
            413,
        )
    if width < 1 or height < 1:
        raise DecodeError("corrupt_image", f"the image declares a size of {width}x{height}")


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
    if data[4:8] == b"ftyp":  # ISO base media: the major brand names the codec
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
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
