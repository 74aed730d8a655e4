"""Output formats: PNG (both writers), lossless WebP and JPEG, from the pipeline's arrays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from service.imaging.encode import (
    EncodeOptions,
    OutputFormat,
    PngEncoder,
    compose,
    describe_png_writer,
    encode_jpeg,
    encode_output,
    encode_png,
    encode_webp_lossless,
    flatten_on_white,
    luma,
    resize_alpha,
)
from tests.service.helpers import noise_image

RGB = noise_image(24, 30, seed=7)
ALPHA = noise_image(24, 30, seed=8)[..., 0]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _profile(space: str) -> bytes:
    if space == "sRGB":
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    header = bytearray(128)
    header[16:20] = b"GRAY"
    return bytes(header)


def test_luma_is_pillows_grey() -> None:
    assert np.array_equal(luma(RGB), np.asarray(Image.fromarray(RGB).convert("L")))


@pytest.mark.parametrize(
    ("alpha", "grey", "channels"),
    [(None, False, 3), (ALPHA, False, 4), (None, True, 1), (ALPHA, True, 2)],
)
def test_compose_stacks_the_output_channels(alpha, grey: bool, channels: int) -> None:
    pixels = compose(RGB, alpha, grey)
    assert pixels.shape == (24, 30, channels) and pixels.flags.c_contiguous
    if alpha is not None:
        assert np.array_equal(pixels[..., -1], ALPHA)


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("alpha", [None, ALPHA])
def test_both_png_writers_give_the_same_image(grey: bool, alpha) -> None:
    images = [
        _open(
            encode_output(
                RGB, OutputFormat.PNG, EncodeOptions(png_encoder=writer), alpha=alpha, grey=grey
            )
        )
        for writer in PngEncoder
    ]
    assert (
        images[0].mode
        == images[1].mode
        == ("L" if grey else "RGB") + ("A" if alpha is not None else "")
    )
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_png_carries_the_icc_profile() -> None:
    profile = _profile("sRGB")
    data = encode_output(RGB, OutputFormat.PNG, EncodeOptions(), icc_profile=profile)
    assert _open(data).info["icc_profile"] == profile


@pytest.mark.parametrize("alpha", [None, ALPHA])
def test_webp_is_lossless(alpha) -> None:
    image = _open(encode_webp_lossless(RGB, alpha=alpha))
    assert image.format == "WEBP"
    expected = compose(RGB, alpha)
    assert np.array_equal(np.asarray(image), expected)


def test_webp_writes_grey_as_equal_channels_and_drops_a_grey_profile() -> None:
    image = _open(encode_webp_lossless(RGB, alpha=ALPHA, grey=True, icc_profile=_profile("GRAY")))
    pixels = np.asarray(image)
    assert image.mode == "RGBA"
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], luma(RGB))
    assert "icc_profile" not in image.info


def test_webp_keeps_an_rgb_profile() -> None:
    profile = _profile("sRGB")
    assert _open(encode_webp_lossless(RGB, icc_profile=profile)).info["icc_profile"] == profile


def test_jpeg_flattens_alpha_onto_white() -> None:
    solid = np.full((24, 32, 3), (30, 120, 200), np.uint8)
    alpha = np.zeros((24, 32), np.uint8)
    alpha[:, 16:] = 255
    image = _open(encode_jpeg(solid, alpha=alpha, quality=95))
    assert (image.format, image.mode) == ("JPEG", "RGB")
    pixels = np.asarray(image).astype(int)
    assert pixels[:, :12].min() >= 245  # transparent half: white (up to JPEG ringing)
    assert np.abs(pixels[:, 20:] - solid[:, 20:]).max() <= 8  # opaque half: the colour


def test_flatten_on_white_blends() -> None:
    pixels = np.array([[[0, 100, 200]]], np.uint8)
    assert flatten_on_white(pixels, np.array([[255]], np.uint8)).tolist() == [[[0, 100, 200]]]
    assert flatten_on_white(pixels, np.array([[0]], np.uint8)).tolist() == [[[255, 255, 255]]]
    assert flatten_on_white(pixels, np.array([[128]], np.uint8)).tolist() == [[[127, 177, 227]]]


def test_flatten_on_white_rounds_every_colour_and_alpha_exactly() -> None:
    # Every (colour, alpha) pair, against exact rational arithmetic rounded to the nearest.
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    pixels = np.repeat(colour[..., np.newaxis], 3, axis=2).astype(np.uint8)
    expected = np.rint((colour * alpha + 255 * (255 - alpha)) / 255)
    flattened = flatten_on_white(pixels, alpha.astype(np.uint8))
    assert flattened.dtype == np.uint8
    assert np.array_equal(flattened[..., 1], expected)


def test_luma_and_flatten_cover_images_taller_than_one_block() -> None:
    # Both work in blocks of rows; an image of several blocks must come out whole.
    tall = np.random.default_rng(3).integers(0, 256, (600, 5, 3), dtype=np.uint8)
    assert np.array_equal(luma(tall), np.asarray(Image.fromarray(tall).convert("L")))
    opaque = np.full(tall.shape[:2], 255, dtype=np.uint8)
    assert np.array_equal(flatten_on_white(tall, opaque), tall)


def test_jpeg_grey_stays_grey_and_quality_matters() -> None:
    assert _open(encode_jpeg(RGB, grey=True)).mode == "L"
    assert len(encode_jpeg(RGB, quality=30)) < len(encode_jpeg(RGB, quality=95))


def test_encode_output_dispatches_on_the_format() -> None:
    options = EncodeOptions(jpeg_quality=80)
    formats = {
        output_format: _open(encode_output(RGB, output_format, options)).format
        for output_format in OutputFormat
    }
    assert formats == {
        OutputFormat.PNG: "PNG",
        OutputFormat.WEBP: "WEBP",
        OutputFormat.JPEG: "JPEG",
    }
    assert OutputFormat.WEBP.media_type == "image/webp"


def test_describe_png_writer() -> None:
    assert describe_png_writer(EncodeOptions(png_encoder=PngEncoder.PILLOW)).startswith("pillow")
    assert describe_png_writer(EncodeOptions(encode_threads=3)).endswith("3 threads)")


def test_resize_alpha_uses_bicubic() -> None:
    alpha = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    resized = resize_alpha(alpha, 4)
    expected = np.asarray(Image.fromarray(alpha).resize((8, 8), Image.Resampling.BICUBIC))
    assert resized.shape == (8, 8)
    np.testing.assert_array_equal(resized, expected)


@pytest.mark.parametrize(
    ("grey", "with_alpha", "mode"),
    [(False, False, "RGB"), (False, True, "RGBA"), (True, False, "L"), (True, True, "LA")],
)
def test_encode_png_modes(grey: bool, with_alpha: bool, mode: str) -> None:
    rgb = noise_image(4, 4)
    if grey:
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    alpha = np.full((4, 4), 9, dtype=np.uint8) if with_alpha else None
    image = Image.open(io.BytesIO(encode_png(rgb, alpha=alpha, grey=grey)))
    assert image.format == "PNG"
    assert image.mode == mode
    assert image.size == (4, 4)
    if grey:
        np.testing.assert_array_equal(np.asarray(image.convert("L")), rgb[..., 0])


def test_encode_png_embeds_icc_profile() -> None:
    profile = _profile("sRGB")
    image = Image.open(io.BytesIO(encode_png(noise_image(2, 2), icc_profile=profile)))
    assert image.info["icc_profile"] == profile
