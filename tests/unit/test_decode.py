"""Decoding and preprocessing, without a server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from devtools.dng import dng
from devtools.images import (
    blue_exif_rotated_jpeg,
    camera_raw,
    cat_sixteen_bit_png,
    corrupt_camera_raw,
    corrupt_phone_format,
    encode,
    phone_format,
    photo,
    png_bomb,
    red_palette_with_transparency,
    rgb_animated_gif,
    striped_sixteen_bit_png,
    truncated_camera_raw,
    truncated_phone_format,
)
from imgsim import raw
from imgsim.decode import DecodeError, decode_image
from imgsim.models import get_spec
from imgsim.preprocess import crop_uint8, normalize


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"])
def test_every_supported_format_decodes_to_rgb_of_the_same_size(fmt):
    data = encode(photo("cat.png"), fmt)
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.size == (451, 300)


def test_exif_orientation_is_applied():
    image = decode_image(blue_exif_rotated_jpeg())
    assert image.size == (32, 64)


def test_a_damaged_exif_block_keeps_the_image_as_stored():
    """Found by the fuzzer: a WebP whose EXIF chunk is not TIFF data made exif_transpose raise."""
    small = photo("cat.png").resize((48, 32))
    data = encode(small, "WEBP", exif=b"LM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03" + b"\x00" * 12)
    image = decode_image(data)
    assert image.size == (48, 32) and image.mode == "RGB"


def mean_difference(image: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference per channel (0-255), ``reference`` resized to ``image``'s size."""
    expected = np.asarray(reference.convert("RGB").resize(image.size), dtype=np.float64)
    return float(np.abs(np.asarray(image, dtype=np.float64) - expected).mean())


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phone_photo_stored_sideways_is_turned_upright(fmt):
    """The photo stored on its side with EXIF orientation 6: Pillow's AVIF keeps it sideways with the
    tag, pillow-heif writes it as a HEIF rotation (irot) that libheif applies; both come out upright."""
    image = decode_image(phone_format(fmt, exif_rotated=True))
    assert image.size == (451, 300) and image.mode == "RGB"
    assert mean_difference(image, photo("cat.png")) < 4
    sideways = photo("cat.png").transpose(Image.Transpose.ROTATE_90)
    assert mean_difference(image, sideways) > 20


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_damaged_phone_photos_are_reported_as_corrupt(fmt):
    for data in (truncated_phone_format(fmt), corrupt_phone_format(fmt)):
        with pytest.raises(DecodeError) as err:
            decode_image(data)
        assert err.value.code == "corrupt_image" and fmt in err.value.message


def test_a_camera_raw_is_read_through_its_full_size_preview_not_its_tiff_thumbnail():
    data = camera_raw("coffee.jpg")
    assert Image.open(io.BytesIO(data)).size == (128, 85)  # what a TIFF reader sees: IFD0's thumbnail
    image = decode_image(data)
    assert image.size == (600, 400) and image.mode == "RGB"
    assert mean_difference(image, photo("coffee.jpg")) < 4


def test_a_camera_raw_without_a_preview_is_developed_from_its_sensor_data():
    """LibRaw's automatic brightness makes it a little brighter than the photo."""
    data = camera_raw("coffee.jpg", preview=False)
    image = decode_image(data)
    assert image.size == (600, 400) and image.mode == "RGB"
    assert mean_difference(image, photo("coffee.jpg")) < 30
    assert mean_difference(image, photo("cat.png")) > 40
    assert decode_image(data, draft_side=200).size == (300, 200)  # half size keeps the short side >= 200
    assert decode_image(data, draft_side=256).size == (600, 400)  # it would not


@pytest.mark.parametrize("options", [{"preview": False, "thumbnail_side": 600}, {}], ids=["bitmap", "small jpeg"])
def test_a_camera_raw_whose_embedded_image_is_a_bitmap_or_a_thumbnail_is_developed(options):
    """A JPEG preview under 256 px on its short side is a thumbnail; bitmaps are never used (raw.py says why)."""
    source = photo("coffee.jpg") if options else photo("coffee.jpg").resize((360, 240))
    image = decode_image(dng(source, **options))
    assert image.size == source.size
    assert mean_difference(image, source) < 30


@pytest.mark.parametrize("orientation, stored", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                                 (8, Image.Transpose.ROTATE_270)])  # fmt: skip
@pytest.mark.parametrize("preview", [True, False], ids=["preview", "developed"])
def test_a_camera_raw_is_turned_as_its_orientation_says(preview, orientation, stored):
    upright = photo("coffee.jpg").resize((400, 266))
    image = decode_image(dng(upright.transpose(stored), preview=preview, orientation=orientation))
    assert image.width > image.height
    assert mean_difference(image, upright) < (4 if preview else 30)


def test_the_pixel_limit_refuses_a_camera_raw_before_libraw_develops_it(monkeypatch):
    def develop(self, half_size):
        raise AssertionError("developed despite the pixel limit")

    monkeypatch.setattr(raw.CameraRaw, "develop", develop)
    with pytest.raises(DecodeError) as err:
        decode_image(camera_raw("coffee.jpg", preview=False), max_pixels=200_000)
    assert err.value.code == "too_many_pixels" and err.value.status == 413
    assert "600x400" in err.value.message
    with pytest.raises(DecodeError) as err:  # the preview is held to the same limit
        decode_image(camera_raw("coffee.jpg"), max_pixels=200_000)
    assert err.value.code == "too_many_pixels"


def test_damaged_camera_raws_are_reported_as_corrupt_with_the_reason():
    for data, reason in [(truncated_camera_raw(), "IOError"), (corrupt_camera_raw(), "does not recognise")]:
        with pytest.raises(DecodeError) as err:
            decode_image(data)
        assert err.value.code == "corrupt_image"
        assert "camera RAW" in err.value.message and reason in err.value.message


def test_plain_tiffs_never_reach_libraw():
    """LibRaw opens a 16-bit grayscale TIFF as if it were a sensor's data; only TIFFs with a camera's
    marks are shown to it, so plain TIFFs decode as before."""
    gray = encode(Image.open(io.BytesIO(cat_sixteen_bit_png())), "TIFF")
    for data in (gray, encode(photo("cat.png"), "TIFF"), encode(photo("cat.png").convert("CMYK"), "TIFF")):
        assert raw.camera_marks(data) is None
        assert decode_image(data).size == (451, 300)
    assert raw.camera_marks(camera_raw()) == "raw"
    assert raw.camera_marks(encode(photo("cat.png"), "JPEG")) is None


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image = decode_image(encode(rgba, "PNG"))
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_palette_transparency_is_composited_over_white():
    assert decode_image(red_palette_with_transparency()).getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_grayscale_keeps_its_full_range():
    image = decode_image(striped_sixteen_bit_png())
    values = sorted({image.getpixel((x, 0)) for x in range(8)})
    assert values == [(0, 0, 0), (255, 255, 255)]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in ink
    red, green, blue = decode_image(encode(cmyk, "JPEG")).getpixel((10, 10))
    assert red > 200 and green < 60 and blue < 60


def test_grayscale_becomes_rgb():
    image = decode_image(encode(Image.new("L", (9, 9), 77), "PNG"))
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_animated_gif_uses_its_first_frame():
    assert decode_image(rgb_animated_gif()).getpixel((5, 5)) == (255, 0, 0)


def test_decompression_bomb_is_refused_before_decoding():
    data = png_bomb()
    assert len(data) < 2_000_000
    with pytest.raises(DecodeError) as err:
        decode_image(data, max_pixels=100_000_000)
    assert err.value.code == "too_many_pixels" and err.value.status == 413
    assert "60000x60000" in err.value.message


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "empty"),
        (b"<html><body>not an image</body></html>", "unsupported_format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported_format"),
        (np.random.default_rng(0).bytes(4096), "unsupported_format"),
    ],
)
def test_unusable_bytes_get_a_named_error(data, code):
    with pytest.raises(DecodeError) as err:
        decode_image(data)
    assert err.value.code == code


def test_truncated_jpeg_is_reported_as_corrupt():
    data = encode(photo("coffee.jpg"), "JPEG")
    with pytest.raises(DecodeError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.code == "corrupt_image"


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_preprocessing_matches_the_torchvision_reference(arch):
    spec = get_spec(arch)
    image = photo("temple.jpg")
    ours = normalize(crop_uint8(image, spec)[None], spec)[0]
    reference = T.Compose(
        [T.Resize(spec.resize_size), T.CenterCrop(spec.input_size), T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    )(image)
    assert ours.shape == (3, spec.input_size, spec.input_size)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_reduced_jpeg_decode_keeps_the_short_side_above_the_resize_target():
    big = photo("dune_grass.jpg").resize((4096, 2560))
    image = decode_image(encode(big, "JPEG", quality=90), draft_side=256)
    assert min(image.size) >= 256
    assert image.size[0] < 4096  # the decoder did reduce
    assert abs(image.size[0] / image.size[1] - 4096 / 2560) < 0.01


def test_portrait_and_landscape_crop_to_the_model_input():
    spec = get_spec("resnet18")
    for size in [(30, 900), (900, 30), (1, 1)]:
        assert crop_uint8(Image.new("RGB", size, (1, 2, 3)), spec).shape == (3, 224, 224)
