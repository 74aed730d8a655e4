"""The parallel strip PNG writer: valid streams, identical pixels, every mode and backend."""

from __future__ import annotations

import io
import itertools
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.imaging.pngwriter import (
    adler32_combine,
    deflate_backend,
    encode_png_strips,
    plan_strips,
)
from tests.service.helpers import noise_image

BACKENDS = [
    pytest.param(False, id="zlib"),
    pytest.param(True, id="isal-if-installed"),
]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        position += 12 + length
    return chunks


def _pixels(mode: str, height: int = 37, width: int = 23) -> np.ndarray:
    rgb = noise_image(height, width, seed=3)
    alpha = noise_image(height, width, seed=4)[..., 0]
    grey = rgb[..., 1]
    return {
        "RGB": rgb,
        "RGBA": np.dstack([rgb, alpha]),
        "L": grey,
        "LA": np.dstack([grey, alpha]),
    }[mode]


@pytest.mark.parametrize("prefer_isal", BACKENDS)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
@pytest.mark.parametrize("threads", [1, 3])
def test_decodes_to_the_same_pixels(mode: str, threads: int, prefer_isal: bool) -> None:
    pixels = _pixels(mode)
    # Tiny strips, so that even this small image is cut into several joined streams.
    data = encode_png_strips(pixels, threads=threads, prefer_isal=prefer_isal, min_strip_bytes=64)
    image = _decode(data)
    assert image.mode == mode
    assert np.array_equal(np.asarray(image), pixels)
    assert sum(kind == b"IDAT" for kind, _ in _chunks(data)) == 2 * threads


@pytest.mark.parametrize("level", [0, 1, 2, 3, 6, 9])
def test_every_level_round_trips(level: int) -> None:
    pixels = _pixels("RGB", 64, 64)
    data = encode_png_strips(pixels, level=level, threads=2, min_strip_bytes=1024)
    assert np.array_equal(np.asarray(_decode(data)), pixels)


def test_joined_stream_is_one_valid_zlib_stream_of_up_filtered_rows() -> None:
    pixels = _pixels("RGB", 40, 9)
    data = encode_png_strips(pixels, threads=4, prefer_isal=False, min_strip_bytes=32)
    stream = b"".join(payload for kind, payload in _chunks(data) if kind == b"IDAT")
    raw = np.frombuffer(zlib.decompress(stream), dtype=np.uint8).reshape(40, 1 + 9 * 3)
    assert (raw[:, 0] == 2).all()  # the Up filter on every row
    rows = pixels.reshape(40, -1)
    assert np.array_equal(raw[0, 1:], rows[0])
    assert np.array_equal(raw[1:, 1:], rows[1:] - rows[:-1])  # uint8 wraps like PNG's filter


def test_icc_profile_is_embedded() -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode_png_strips(_pixels("RGBA"), icc_profile=profile, min_strip_bytes=64)
    image = _decode(data)
    assert image.info["icc_profile"] == profile
    assert np.array_equal(np.asarray(image), _pixels("RGBA"))


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 50, 3), (50, 1, 4), (2, 2)])
def test_degenerate_shapes(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png_strips(pixels, threads=2, min_strip_bytes=1)
    assert np.array_equal(np.asarray(_decode(data)), pixels)


def test_same_pixels_as_pillow_on_a_photo_like_image() -> None:
    pixels = _pixels("RGB", 120, 80)
    ours = encode_png_strips(pixels, threads=2, min_strip_bytes=4096)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    assert np.array_equal(np.asarray(_decode(ours)), np.asarray(_decode(buffer.getvalue())))


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4,), np.uint8),
    ],
)
def test_rejects_what_png_cannot_hold(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png_strips(pixels)


def test_adler32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65521, 100_000, 199_999, 200_000):
        first, second = data[:cut], data[cut:]
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(data)


@pytest.mark.parametrize("height", [1, 7, 100, 1000])
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_plan_strips_covers_every_row_in_order(height: int, threads: int) -> None:
    strips = plan_strips(height, row_bytes=3000, threads=threads, min_strip_bytes=3000)
    assert strips[0][0] == 0 and strips[-1][1] == height
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(strips))
    assert len(strips) <= max(1, 2 * threads)


def test_small_images_are_one_strip() -> None:
    assert plan_strips(100, row_bytes=300, threads=8) == [(0, 100)]


def test_backend_levels() -> None:
    assert deflate_backend(0).name == "zlib"  # stored blocks need no fast compressor
    assert deflate_backend(5, prefer_isal=False).level == 5
    fast = deflate_backend(9)
    assert fast.level == (3 if fast.name == "isal" else 9)
    with pytest.raises(ValueError):
        deflate_backend(10)
