"""A lossy WebP's quantiser, read from its VP8 frame header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging.webp import vp8_quantizer
from tests.service.imaging.test_evidence import scene


def _webp(image: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("quality", "quantizer"), [(30, 68), (50, 52), (75, 36), (90, 12)])
def test_the_quantiser_is_libwebps_for_the_quality(quality: int, quantizer: int) -> None:
    # libwebp's segment quantised most, at its default noise shaping (evidence.webp_quality).
    assert vp8_quantizer(_webp(scene(256), quality=quality)) == quantizer


def test_a_lossy_webp_with_alpha_is_read_too() -> None:
    rgba = np.dstack([scene(128), np.full((128, 128), 200, np.uint8)])
    data = _webp(rgba, quality=75)
    assert data[12:16] == b"VP8X"  # the extended container: ALPH, then the VP8 chunk
    assert vp8_quantizer(data) == 36


def test_a_lossless_webp_has_no_quantiser() -> None:
    assert vp8_quantizer(_webp(scene(64), lossless=True)) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", b"RIFF\x04\x00\x00\x00WEBP", b"RIFF\x0c\x00\x00\x00WEBPVP8 \xff"],
    ids=["empty", "png", "no-chunk", "chunk-past-the-end"],
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
