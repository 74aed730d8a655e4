"""A lossy WebP's quantiser, read from its VP8 frame header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging.evidence import webp_quality
from service.imaging.webp import vp8_quantizer
from tests.service.imaging.test_evidence import scene


def _webp(image: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 100])
def test_the_quantiser_is_libwebps_for_the_quality(quality: int) -> None:
    # libwebp's segment quantised most, at its default noise shaping (evidence.webp_quality).
    assert abs(webp_quality(vp8_quantizer(_webp(scene(256), quality=quality))) - quality) <= 1


def test_a_lossy_webp_with_alpha_is_read_too() -> None:
    rgba = np.dstack([scene(128), np.full((128, 128), 200, np.uint8)])
    data = _webp(rgba, quality=75)
    assert data[12:16] == b"VP8X"  # the extended container: ALPH, then the VP8 chunk
    assert vp8_quantizer(data) == vp8_quantizer(_webp(scene(128), quality=75))


def test_a_lossless_webp_has_no_quantiser() -> None:
    assert vp8_quantizer(_webp(scene(64), lossless=True)) is None


def test_an_animated_webp_has_no_quantiser() -> None:
    frames = [Image.fromarray(scene(64)), Image.fromarray(scene(64)[::-1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], quality=50)
    assert vp8_quantizer(buffer.getvalue()) is None


def test_a_lossy_chunk_after_a_lossless_image_is_not_read() -> None:
    lossless, lossy = _webp(scene(64), lossless=True), _webp(scene(64), quality=50)
    assert vp8_quantizer(lossless + lossy[12:]) is None  # past the RIFF size, after VP8L


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\x04\x00\x00\x00WEBP",
        b"RIFF\x0c\x00\x00\x00WEBPVP8 \xff",
        b"RIFF\x20\x00\x00\x00WEBPVP8 \xe8\x03\x00\x00" + bytes(12),
    ],
    ids=["empty", "png", "no-chunk", "truncated-chunk-header", "chunk-past-the-end"],
)
def test_other_files_have_no_quantiser(data: bytes) -> None:
    assert vp8_quantizer(data) is None


def test_a_damaged_header_gives_no_quantiser_and_never_raises() -> None:
    data = _webp(scene(64), quality=75)
    frame = data.index(b"VP8 ") + 8
    rng = np.random.default_rng(0)
    for cut in range(len(data)):
        assert vp8_quantizer(data[:cut]) in (None, 36)
    for _ in range(200):
        damaged = bytearray(data)
        damaged[frame + 10 : frame + 20] = rng.integers(0, 256, 10, dtype=np.uint8).tobytes()
        quantizer = vp8_quantizer(bytes(damaged))
        assert quantizer is None or 0 <= quantizer <= 127
