"""`POST /upscale?metadata=keep`: the photo's EXIF and XMP in the answer, upright and resized;
`strip`, the default, keeps neither."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image

from service.config import Settings
from tests.service.api.test_app import _assert_error
from tests.service.helpers import SCALE, encode, noise_image

SettingsFactory = Callable[..., Settings]
GPS = {1: "N", 2: (48.0, 51.0, 24.0)}
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description exif:PixelXDimension="6"/></x:xmpmeta>'


def _photo() -> bytes:
    """A 6 x 4 JPEG that its EXIF turns a quarter (orientation 6), with a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.IFD.GPSInfo] = GPS
    return encode(Image.fromarray(noise_image(4, 6)), "JPEG", exif=exif.tobytes(), xmp=XMP)


def _upscale(client: TestClient, accept: str, **params: str) -> Image.Image:
    headers = {"Content-Type": "image/jpeg", "Accept": accept}
    response = client.post("/upscale", params=params, content=_photo(), headers=headers)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.mark.parametrize("accept", ["image/png", "image/webp", "image/jpeg"])
def test_keep_carries_exif_and_xmp_upright_at_the_outputs_size(
    client: TestClient, accept: str
) -> None:
    image = _upscale(client, accept, metadata="keep")
    assert image.size == (4 * SCALE, 6 * SCALE)
    exif = image.getexif()
    assert exif[ExifTags.Base.Orientation] == 1
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == GPS
    sizes = exif.get_ifd(ExifTags.IFD.Exif)
    assert (sizes[ExifTags.Base.ExifImageWidth], sizes[ExifTags.Base.ExifImageHeight]) == (16, 24)
    assert b'exif:PixelXDimension="16"' in image.info["xmp"]


def test_strip_is_the_default(client: TestClient) -> None:
    image = _upscale(client, "image/png")
    assert not image.getexif() and "xmp" not in image.info


def test_an_unknown_metadata_value_is_a_422_naming_it(client: TestClient) -> None:
    response = client.post("/upscale?metadata=all", content=b"")
    _assert_error(response, 422, "metadata='all'")
