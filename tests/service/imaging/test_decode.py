"""Decoding every supported mode and format."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from service.exceptions import (
    CorruptImageError,
    EmptyUploadError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.imaging.decode import decode_image, inspect_image
from tests.service.helpers import encode, noise_image, raw_png, raw_tiff

LIMIT = 10_000


def _rgb(width: int = 6, height: int = 4) -> Image.Image:
    return Image.fromarray(noise_image(height, width))


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb(image_format: str) -> None:
    decoded = decode_image(encode(_rgb(), image_format), max_pixels=LIMIT)
    assert decoded.info.format == image_format
    assert decoded.rgb.shape == (4, 6, 3)
    assert decoded.rgb.dtype == np.uint8


def test_lossless_rgb_pixels_are_unchanged() -> None:
    pixels = noise_image(4, 6)
    decoded = decode_image(encode(Image.fromarray(pixels)), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded.rgb, pixels)
    assert decoded.alpha is None
    assert not decoded.grey


def test_grey_image_is_flagged_and_replicated() -> None:
    decoded = decode_image(encode(_rgb().convert("L")), max_pixels=LIMIT)
    assert decoded.grey
    assert decoded.alpha is None
    assert (decoded.rgb[..., 0] == decoded.rgb[..., 2]).all()


def test_bilevel_image_becomes_grey() -> None:
    decoded = decode_image(encode(_rgb().convert("1")), max_pixels=LIMIT)
    assert decoded.grey
    assert set(np.unique(decoded.rgb)) <= {0, 255}


def test_grey_with_alpha_keeps_alpha() -> None:
    image = _rgb().convert("L")
    image.putalpha(Image.new("L", image.size, 100))
    decoded = decode_image(encode(image), max_pixels=LIMIT)
    assert decoded.grey
    assert decoded.alpha is not None
    assert (decoded.alpha == 100).all()


def test_rgba_alpha_is_separated() -> None:
    alpha = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    image = _rgb()
    image.putalpha(Image.fromarray(alpha))
    decoded = decode_image(encode(image), max_pixels=LIMIT)
    assert decoded.rgb.shape == (4, 6, 3)
    np.testing.assert_array_equal(decoded.alpha, alpha)


def test_palette_image_becomes_rgb() -> None:
    decoded = decode_image(encode(_rgb().convert("P")), max_pixels=LIMIT)
    assert decoded.rgb.shape == (4, 6, 3)
    assert decoded.alpha is None
    assert not decoded.grey


def test_palette_transparency_becomes_alpha() -> None:
    image = _rgb().convert("P")
    transparent_index = image.getpixel((0, 0))
    decoded = decode_image(encode(image, transparency=transparent_index), max_pixels=LIMIT)
    assert decoded.alpha is not None
    assert decoded.alpha[0, 0] == 0
    assert decoded.alpha.max() == 255


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode_image(encode(_rgb().convert("CMYK"), "JPEG"), max_pixels=LIMIT)
    assert decoded.rgb.shape == (4, 6, 3)
    assert not decoded.grey


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    png = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    decoded = decode_image(png, max_pixels=LIMIT)
    assert decoded.grey
    assert decoded.rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_sixteen_bit_grey_with_a_transparent_value_keeps_its_transparency() -> None:
    values = np.array([[0, 1000], [1001, 65535]], dtype=np.uint16)
    png = encode(Image.fromarray(values), transparency=1000)
    decoded = decode_image(png, max_pixels=LIMIT)
    assert decoded.grey
    # Only the exact 16-bit value is transparent, not 1001, which rounds to the same 8 bits.
    assert decoded.alpha.tolist() == [[255, 0], [255, 255]]


def test_sixteen_bit_colour_png_is_reduced_to_eight_bits() -> None:
    pixel = struct.pack(">HHH", 65535, 32768, 0)
    decoded = decode_image(raw_png(1, 1, 2, b"\x00" + pixel), max_pixels=LIMIT)
    assert decoded.rgb[0, 0].tolist() == [255, 128, 0]


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, 0] = 255  # white left column
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    decoded = decode_image(encode(Image.fromarray(pixels), exif=exif), max_pixels=LIMIT)
    assert decoded.rgb.shape == (4, 2, 3)
    assert (decoded.rgb[0] == 255).all()  # the left column became the top row
    assert (decoded.rgb[1:] == 0).all()


def test_icc_profile_is_kept() -> None:
    profile = _srgb_profile()
    decoded = decode_image(encode(_rgb(), icc_profile=profile), max_pixels=LIMIT)
    assert decoded.icc_profile == profile


def test_icc_profile_of_another_colour_space_is_dropped() -> None:
    # An RGB profile does not describe a greyscale output.
    grey = _rgb().convert("L")
    decoded = decode_image(encode(grey, icc_profile=_srgb_profile()), max_pixels=LIMIT)
    assert decoded.icc_profile is None


def test_pixel_limit_is_enforced_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="10x10"):
        decode_image(encode(Image.new("RGB", (10, 10))), max_pixels=99)


def test_decompression_bomb_is_rejected_without_decoding() -> None:
    # The header claims 100000 x 100000 pixels (30 GB decoded) over a few bytes of data.
    bomb = raw_png(100_000, 100_000, 2, b"")
    # Pillow's own bomb guard fires first; the message still quotes the service's limit.
    with pytest.raises(ImageTooLargeError, match="declares 10000000000 pixels; the limit is 10000"):
        inspect_image(bomb, max_pixels=LIMIT)
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb, max_pixels=LIMIT)


def test_inspect_reads_the_header() -> None:
    info = inspect_image(encode(_rgb(7, 3), "JPEG"), max_pixels=LIMIT)
    assert (info.format, info.mode, info.width, info.height, info.pixels) == (
        "JPEG", "RGB", 7, 3, 21,
    )  # fmt: skip


def test_empty_upload() -> None:
    with pytest.raises(EmptyUploadError):
        decode_image(b"", max_pixels=LIMIT)


def test_bytes_that_are_no_image() -> None:
    with pytest.raises(UnsupportedImageError, match="not an image"):
        decode_image(b"hello, this is text", max_pixels=LIMIT)


def test_known_but_unsupported_format_is_named() -> None:
    with pytest.raises(UnsupportedImageError, match="PPM"):
        decode_image(encode(_rgb(), "PPM"), max_pixels=LIMIT)


def test_unsupported_pixel_mode() -> None:
    image = Image.fromarray(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(UnsupportedImageError, match="mode F"):
        decode_image(encode(image, "TIFF"), max_pixels=LIMIT)


@pytest.mark.parametrize(("bits", "sample_format", "samples"), [(16, 3, 1), (32, 3, 3), (64, 3, 1)])
def test_a_sound_tiff_with_float_samples_is_unsupported_not_corrupt(
    bits: int, sample_format: int, samples: int
) -> None:
    # Pillow cannot open these at all; they are still well-formed files, so 415 and not 422.
    with pytest.raises(UnsupportedImageError, match="stores its pixels in a way"):
        decode_image(raw_tiff(bits, sample_format, samples), max_pixels=LIMIT)


@pytest.mark.parametrize(("bits", "sample_format"), [(16, 2), (32, 2), (32, 1)])
def test_signed_or_32_bit_integer_tiff_is_unsupported(bits: int, sample_format: int) -> None:
    # Pillow opens these as mode I; scaling them as unsigned 16-bit would wreck the picture.
    with pytest.raises(UnsupportedImageError, match="signed or 32-bit integer"):
        decode_image(raw_tiff(bits, sample_format), max_pixels=LIMIT)


def test_unsigned_sixteen_bit_tiff_is_decoded() -> None:
    decoded = decode_image(raw_tiff(16, 1), max_pixels=LIMIT)
    assert decoded.grey and decoded.rgb.shape == (4, 4, 3)


def test_png_metadata_over_pillows_safety_limit_is_too_large_not_corrupt() -> None:
    # A 3 MB ICC profile deflates to a few kilobytes; Pillow refuses to inflate it past 1 MiB.
    huge_profile = bytes(40) + b"RGB " + bytes(3 * 1024 * 1024)
    with pytest.raises(ImageTooLargeError, match="embedded metadata"):
        decode_image(encode(_rgb(), icc_profile=huge_profile), max_pixels=LIMIT)


def test_truncated_png_is_corrupt() -> None:
    png = encode(Image.fromarray(noise_image(40, 40)))
    with pytest.raises(CorruptImageError, match="PNG"):
        decode_image(png[: len(png) // 2], max_pixels=LIMIT)


def test_truncated_jpeg_is_corrupt() -> None:
    jpeg = encode(Image.fromarray(noise_image(64, 64)), "JPEG")
    with pytest.raises(CorruptImageError, match="JPEG file is truncated"):
        decode_image(jpeg[: len(jpeg) * 3 // 4], max_pixels=LIMIT)


def test_truncated_jpeg_header_is_corrupt() -> None:
    jpeg = encode(Image.fromarray(noise_image(8, 8)), "JPEG")
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(jpeg[:200], max_pixels=LIMIT)


def test_damaged_header_of_a_supported_format_is_corrupt() -> None:
    with pytest.raises(CorruptImageError, match="PNG"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, max_pixels=LIMIT)


def test_png_checksum_error_is_corrupt() -> None:
    png = bytearray(encode(_rgb()))
    png[20] ^= 0xFF  # inside the IHDR chunk, so its CRC no longer matches
    with pytest.raises(CorruptImageError):
        decode_image(bytes(png), max_pixels=LIMIT)
