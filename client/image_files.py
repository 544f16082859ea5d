"""Opening a local image file for the client's own look at its pixels (pHash, report thumbnails).

Every format the server accepts opens here too: JPEG, PNG, WebP, GIF, BMP, TIFF and AVIF through
Pillow, HEIC/HEIF through pillow-heif, camera RAW (by its suffix) through the preview the camera
embedded, else a half-size development by LibRaw (rawpy). The server decodes uploads on its own
(handler/imgsim/decode.py); the client never imports the handler.
"""

from __future__ import annotations

import io
from pathlib import Path

import pillow_heif
import rawpy
from PIL import Image, ImageOps

from client.scan import RAW_SUFFIXES

pillow_heif.register_heif_opener()


def open_image(path: str | Path, mode: str = "RGB", draft_side: int = 256) -> Image.Image:
    """The image in ``path``, loaded and upright (EXIF orientation applied). A JPEG (and a RAW's JPEG
    preview) is decoded at 1/2..1/8 scale, in ``mode``, while its short side stays at least ``draft_side``."""
    opened = _open_raw(Path(path)) if Path(path).suffix.lower() in RAW_SUFFIXES else Image.open(path)
    with opened as image:
        image.draft(mode, (draft_side, draft_side))  # only JPEG can; the other formats ignore it
        return ImageOps.exif_transpose(image)  # a new image, its pixels loaded: the file can close


def pixel_count(path: str | Path) -> int:
    """width x height of the picture, from its header alone (a RAW: its sensor's visible area, not the
    size of whatever preview it embeds)."""
    if Path(path).suffix.lower() in RAW_SUFFIXES:
        with rawpy.imread(str(path)) as raw:
            return raw.sizes.width * raw.sizes.height
    with Image.open(path) as image:  # Pillow reads no pixels before they are asked for
        width, height = image.size
    return width * height


def _open_raw(path: Path) -> Image.Image:
    """The RAW's JPEG preview (its EXIF, written by LibRaw, carries the RAW's orientation), else its
    sensor data developed at half size. A bitmap thumbnail is not read: the server's raw.py says why."""
    with rawpy.imread(str(path)) as raw:
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
            thumb = None
        if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
            return Image.open(io.BytesIO(thumb.data))
        return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True))  # turned by LibRaw
