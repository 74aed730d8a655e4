"""The one metadata policy for every input format, and WebP sizes read before Pillow decodes.

Every output must read back, in Pillow and in the service: an ICC profile is kept only up to the
size Pillow's PNG reader inflates (`PngImagePlugin.MAX_TEXT_CHUNK`), whatever the input format.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, WebPImagePlugin

from service.exceptions import ImageTooLargeError
from service.imaging.decode import (
    decode_image,
    embeddable_icc,
    inspect_image,
    max_icc_profile_bytes,
    webp_canvas_size,
)
from service.imaging.encode import EncodeOptions, OutputFormat, PngEncoder, encode_output
from tests.service.helpers import encode, noise_image

LIMIT = 10_000
#: Input formats that can carry an ICC profile, with the options that write one.
ICC_FORMATS = ["PNG", "JPEG", "WEBP", "TIFF"]


def _profile(size: int, space: bytes = b"RGB ") -> bytes:
    """Bytes that claim an ICC colour space (header bytes 16-20), of any size."""
    rng = np.random.default_rng(size)
    return bytes(16) + space + rng.integers(0, 256, max(size - 20, 0), np.uint8).tobytes()


def _rgb() -> Image.Image:
    return Image.fromarray(noise_image(4, 6))


def test_the_limit_is_pillows_png_text_chunk_limit() -> None:
    assert max_icc_profile_bytes() == PngImagePlugin.MAX_TEXT_CHUNK


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP", "TIFF"])
def test_an_oversized_profile_is_dropped_from_every_format(image_format: str) -> None:
    profile = _profile(max_icc_profile_bytes() + 1)
    decoded = decode_image(encode(_rgb(), image_format, icc_profile=profile), max_pixels=LIMIT)
    assert decoded.icc_profile is None
    assert decoded.rgb.shape == (4, 6, 3)


@pytest.mark.parametrize("image_format", ICC_FORMATS)
def test_a_profile_of_the_largest_size_is_kept_by_every_format(image_format: str) -> None:
    profile = _profile(max_icc_profile_bytes())
    decoded = decode_image(encode(_rgb(), image_format, icc_profile=profile), max_pixels=LIMIT)
    assert decoded.icc_profile == profile


def test_an_oversized_png_profile_is_still_refused() -> None:
    # The PNG reader itself refuses it (413): the same limit, applied on the way in.
    data = encode(_rgb(), "PNG", icc_profile=_profile(2 << 20))
    with pytest.raises(ImageTooLargeError, match="metadata"):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.parametrize("value", [None, b"", (1, 2), "RGB ", 42])
def test_embeddable_icc_drops_what_is_not_a_profile(value: object) -> None:
    assert embeddable_icc(value) is None


@pytest.mark.parametrize("output_format", list(OutputFormat))
@pytest.mark.parametrize("png_encoder", list(PngEncoder))
@pytest.mark.parametrize("size", [4096, max_icc_profile_bytes(), max_icc_profile_bytes() + 1])
def test_every_output_reads_back_in_pillow_and_in_the_service(
    output_format: OutputFormat, png_encoder: PngEncoder, size: int
) -> None:
    # The encoder applies the limit too, whatever its caller passes.
    profile = _profile(size)
    data = encode_output(
        noise_image(3, 5),
        output_format,
        EncodeOptions(png_encoder=png_encoder),
        icc_profile=profile,
    )
    expected = profile if size <= max_icc_profile_bytes() else None
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.info.get("icc_profile") == expected
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.rgb.shape == (3, 5, 3)


# --- WebP sizes from the RIFF chunks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "chunk"),
    [
        ({"lossless": True}, b"VP8L"),
        ({"quality": 80}, b"VP8 "),
        ({"lossless": True, "icc_profile": b"x" * 64}, b"VP8X"),
    ],
    ids=["VP8L", "VP8", "VP8X"],
)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (300, 17)])
def test_webp_canvas_size_reads_each_header(
    options: dict, chunk: bytes, width: int, height: int
) -> None:
    data = encode(Image.new("RGB", (width, height), (10, 20, 30)), "WEBP", **options)
    assert data[12:16] == chunk
    assert webp_canvas_size(data) == (width, height)


def test_webp_canvas_size_of_a_transparent_lossy_file() -> None:
    data = encode(Image.new("RGBA", (9, 5), (10, 20, 30, 40)), "WEBP", quality=80)
    assert webp_canvas_size(data) == (9, 5)


@pytest.mark.parametrize(
    "data", [b"", b"RIFF", b"RIFF\0\0\0\0WEBPVP8L" + bytes(20), b"\x89PNG" + bytes(40)]
)
def test_webp_canvas_size_is_none_when_it_cannot_tell(data: bytes) -> None:
    assert webp_canvas_size(data) is None


def _vp8l_bomb(side: int = 16384) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True))
    bits = (side - 1) | (side - 1) << 14 | (data[24] & 0xF0) << 24
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


def _vp8x_bomb(side: int = 1 << 20) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True, icc_profile=b"x"))
    data[24:30] = (side - 1).to_bytes(3, "little") * 2
    return bytes(data)


@pytest.mark.parametrize("bomb", [_vp8l_bomb(), _vp8x_bomb()], ids=["VP8L", "VP8X"])
def test_webp_bomb_is_refused_before_pillow_allocates_its_canvas(
    bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("Pillow's WebP decoder was reached")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", never)
    for check in (inspect_image, decode_image):
        with pytest.raises(ImageTooLargeError, match="the limit is 10000 pixels"):
            check(bomb, max_pixels=LIMIT)


def test_webp_within_the_limit_still_opens() -> None:
    data = encode(Image.new("RGB", (100, 100)), "WEBP", lossless=True)
    assert inspect_image(data, max_pixels=LIMIT).pixels == 10_000
