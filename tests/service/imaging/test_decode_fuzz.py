"""Property-based fuzzing of the decode path on mutated files of every accepted format.

Whatever the bytes, decoding ends in one of the documented outcomes: a well-formed
`DecodedImage`, or one of the domain errors of `service.exceptions` that the HTTP layer maps to
a 4xx. Never another exception (which would be a 500).

Bounded and reproducible for CI: `MAX_EXAMPLES` examples per seed file, derandomized, no
deadline (the machines running the suite are often loaded). 16 seed files, so 3200 examples in
all.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.exceptions import (
    CorruptImageError,
    EmptyUploadError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.imaging.decode import DecodedImage, decode_image, inspect_image, max_icc_profile_bytes
from tests.service.helpers import noise_image

MAX_EXAMPLES = 200
LIMIT = 64 * 64
DOCUMENTED = (CorruptImageError, EmptyUploadError, ImageTooLargeError, UnsupportedImageError)


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rgb = Image.fromarray(noise_image(13, 11))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(noise_image(13, 11, seed=3)[..., 0]))
    grey = rgb.convert("L")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the EXIF transpose
    profile = bytes(16) + b"RGB " + bytes(200)
    return {
        "png-rgb": _encode(rgb, "PNG", icc_profile=profile),
        "png-rgba": _encode(rgba, "PNG"),
        "png-palette": _encode(rgb.quantize(8), "PNG", transparency=0),
        "png-grey16": _encode(grey16, "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg-progressive-grey": _encode(grey, "JPEG", progressive=True),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "webp-lossless": _encode(rgba, "WEBP", lossless=True),
        "webp-lossy": _encode(rgb, "WEBP", quality=70),
        "webp-extended": _encode(rgb, "WEBP", lossless=True, icc_profile=profile),
        "bmp": _encode(rgb, "BMP"),
        "bmp-palette": _encode(rgb.quantize(16), "BMP"),
        "tiff": _encode(rgba, "TIFF"),
        "tiff-deflate": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "gif": _encode(rgb.quantize(32), "GIF"),
        "gif-transparent": _encode(rgb.quantize(32), "GIF", transparency=1),
    }


SEEDS = _seeds()


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    """The seed file with byte flips, an overwritten run, an insertion and/or a truncation.

    Flips favour the first 64 bytes, where the headers (and their declared sizes) live.
    """
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        head = draw(st.booleans())
        at = draw(st.integers(0, min(len(data), 64) - 1 if head else len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        run = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(run)] = run
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=32))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _check_decoded(decoded: DecodedImage) -> None:
    height, width = decoded.rgb.shape[:2]
    assert decoded.rgb.dtype == np.uint8
    assert decoded.rgb.shape == (height, width, 3)
    assert 1 <= height * width <= LIMIT
    if decoded.alpha is not None:
        assert decoded.alpha.dtype == np.uint8
        assert decoded.alpha.shape == (height, width)
    if decoded.icc_profile is not None:
        assert isinstance(decoded.icc_profile, bytes)
        assert 0 < len(decoded.icc_profile) <= max_icc_profile_bytes()


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_end_in_a_documented_outcome(name: str) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=mutations(SEEDS[name]))
    def check(data: bytes) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about some damage it reads past
            with contextlib.suppress(DOCUMENTED):
                inspect_image(data, max_pixels=LIMIT)
            try:
                decoded = decode_image(data, max_pixels=LIMIT)
            except DOCUMENTED:
                return
        _check_decoded(decoded)

    check()


def test_the_seed_files_decode() -> None:
    for name, data in SEEDS.items():
        decoded = decode_image(data, max_pixels=LIMIT)
        assert decoded.rgb.shape[:2] in ((13, 11), (11, 13)), name
