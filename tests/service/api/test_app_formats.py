"""The HTTP layer's performance features: content negotiation, timing headers, tile modes,
batched tiles under concurrent requests, and what /readyz reports about them."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.core.engines import create_engine
from service.core.tiling import upscale_tiled
from tests.service.helpers import (
    SCALE,
    encode,
    lifecycle_of,
    noise_image,
    png_bytes,
    wait_until_ready,
)

SettingsFactory = Callable[..., Settings]


def _post(client: TestClient, data: bytes, accept: str | None = None) -> Any:
    headers = {"Content-Type": "image/png"}
    if accept is not None:
        headers["Accept"] = accept
    return client.post("/upscale", content=data, headers=headers)


def _pixels(response: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.parametrize(
    ("accept", "media_type", "image_format"),
    [
        (None, "image/png", "PNG"),
        ("*/*", "image/png", "PNG"),
        ("image/png", "image/png", "PNG"),
        ("image/webp", "image/webp", "WEBP"),
        ("image/jpeg", "image/jpeg", "JPEG"),
        ("image/avif,image/webp,*/*;q=0.8", "image/webp", "WEBP"),
    ],
)
def test_accept_chooses_the_format(
    client: TestClient, accept: str | None, media_type: str, image_format: str
) -> None:
    response = _post(client, png_bytes(5, 3), accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["vary"] == "Accept"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == (image_format, (20, 12))


def test_webp_is_the_same_picture_as_png(client: TestClient) -> None:
    image = Image.fromarray(noise_image(4, 6))
    image.putalpha(Image.fromarray(noise_image(4, 6, seed=9)[..., 0]))
    upload = encode(image)
    png = _pixels(_post(client, upload))
    webp = _pixels(_post(client, upload, "image/webp"))
    assert png.shape == webp.shape == (16, 24, 4)
    assert np.array_equal(png, webp)


def test_jpeg_of_a_transparent_image_is_opaque(client: TestClient) -> None:
    image = Image.fromarray(noise_image(4, 6)).convert("RGBA")
    image.putalpha(0)  # fully transparent: JPEG shows the white background
    response = _post(client, encode(image), "image/jpeg")
    result = Image.open(io.BytesIO(response.content))
    assert result.mode == "RGB"
    assert np.asarray(result).min() >= 240


def test_unacceptable_accept_is_406_before_the_upload_is_read(client: TestClient) -> None:
    # The body is empty: a 422 would mean the upload was read before the Accept header.
    response = client.post(
        "/upscale", content=b"", headers={"Content-Type": "image/png", "Accept": "image/gif"}
    )
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/json"
    assert "image/png, image/webp, image/jpeg" in response.json()["detail"]


def test_server_timing_splits_the_request(client: TestClient) -> None:
    response = _post(client, png_bytes(5, 3))
    parts = dict(
        item.strip().split(";dur=") for item in response.headers["server-timing"].split(",")
    )
    assert set(parts) == {"decode", "model", "encode"}
    assert all(float(value) >= 0 for value in parts.values())


def test_readyz_reports_the_performance_settings(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert (body["precision"], body["precision_setting"]) == ("fp32", "auto")
    assert body["tile_mode"] == "fit"  # the CPU provider fits tiles to the image
    assert (body["tile_size"], body["tile_overlap"], body["tile_batch_size"]) == (16, 2, 1)
    # Service-side I/O binding and the cross-request tile batcher are gone.
    assert "io_binding" not in body and "batching" not in body
    assert body["encoding"]["png"].startswith("strips")
    assert body["encoding"]["formats"] == ["image/png", "image/webp", "image/jpeg"]


def test_openapi_documents_formats_and_406(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/upscale"]["post"]
    assert {"image/png", "image/webp", "image/jpeg"} <= set(
        operation["responses"]["200"]["content"]
    )
    assert "406" in operation["responses"]


@pytest.mark.parametrize("tile_mode", ["fit", "fixed"])
def test_both_tile_modes_serve_the_models_output(
    make_settings: SettingsFactory, tile_mode: str
) -> None:
    pixels = noise_image(30, 40)
    with TestClient(create_app(make_settings(tile_mode=tile_mode))) as client:
        wait_until_ready(client)
        assert client.get("/readyz").json()["tile_mode"] == tile_mode
        response = _post(client, encode(Image.fromarray(pixels)))
        engine = lifecycle_of(client.app).models.default.engine
    # The conv model sees 3x3 pixels: any tiling with overlap 2 equals whole-image inference
    # (one fitted 64-pixel tile covers this image whole).
    expected = upscale_tiled(pixels, engine.run, scale=SCALE, tile_size=64, overlap=2, fit=True)
    assert np.array_equal(_pixels(response), expected)


def test_pillow_png_writer_gives_the_same_pixels(make_settings: SettingsFactory) -> None:
    upload = png_bytes(7, 5, mode="LA")
    outputs = []
    for writer in ("strips", "pillow"):
        with TestClient(create_app(make_settings(png_encoder=writer))) as client:
            wait_until_ready(client)
            outputs.append(_pixels(_post(client, upload)))
    assert np.array_equal(outputs[0], outputs[1])


def test_concurrent_requests_in_batched_fixed_tiles_get_their_own_images(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        tile_mode="fixed",
        tile_batch_size=4,
        max_concurrency=4,
        max_queue=16,
        max_input_pixels=128 * 128,
    )
    images = [noise_image(12 + 7 * index, 20 + 5 * index, seed=index) for index in range(6)]
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        ready = client.get("/readyz").json()
        engine = lifecycle_of(client.app).models.default.engine
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(lambda image: _post(client, encode(Image.fromarray(image))), images)
            )
    assert (ready["tile_mode"], ready["tile_batch_size"]) == ("fixed", 4)
    for image, response in zip(images, responses, strict=True):
        assert response.status_code == 200
        expected = upscale_tiled(
            image, engine.run, scale=SCALE, tile_size=16, overlap=2, batch_size=4
        )
        assert np.array_equal(_pixels(response), expected)


# --- Every output reads back: the metadata policy, per input and output format -------------------


def _icc(size: int) -> bytes:
    rng = np.random.default_rng(size)
    return bytes(16) + b"RGB " + rng.integers(0, 256, size - 20, np.uint8).tobytes()


@pytest.mark.parametrize("accept", ["image/png", "image/webp", "image/jpeg"])
@pytest.mark.parametrize("input_format", ["PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"])
@pytest.mark.parametrize("icc_size", [1 << 20, 2 << 20], ids=["1MiB", "2MiB"])
def test_every_output_is_accepted_when_posted_back(
    make_settings: SettingsFactory, input_format: str, accept: str, icc_size: int
) -> None:
    # A 2 MiB profile once gave a 200 whose PNG Pillow could not open, and that the service
    # answered with 413. Now a profile is kept up to Pillow's PNG limit (1 MiB), whatever the
    # formats; a PNG upload with a larger one is refused, as before.
    settings = make_settings(max_upload_bytes=8 << 20)
    profile = _icc(icc_size)
    options = {"icc_profile": profile} if input_format not in ("GIF", "BMP") else {}
    upload = encode(Image.fromarray(noise_image(5, 7)), input_format, **options)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        response = _post(client, upload, accept)
        if input_format == "PNG" and icc_size > 1 << 20:
            assert response.status_code == 413, response.text
            return
        assert response.status_code == 200, response.text
        with Image.open(io.BytesIO(response.content)) as image:
            image.load()
            assert image.size == (28, 20)
            kept = input_format not in ("GIF", "BMP") and icc_size <= 1 << 20
            assert image.info.get("icc_profile") == (profile if kept else None)
        again = _post(client, response.content)
        assert again.status_code == 200, again.text
        assert Image.open(io.BytesIO(again.content)).size == (112, 80)


class _RecordingEngine:
    """An engine that notes the tile shape of every call made through it."""

    def __init__(self, engine: Any) -> None:
        self.inner, self.shapes = engine, []
        self.info = engine.info

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape[1:3])
        return self.inner.run(batch)

    def warm_up(self) -> float:
        self.shapes.append(("square",))
        return self.inner.warm_up()


def test_warm_up_runs_every_fixed_tile_shape(make_settings: SettingsFactory) -> None:
    engines: list[_RecordingEngine] = []

    def factory(settings: Any) -> _RecordingEngine:
        engines.append(_RecordingEngine(create_engine(settings)))
        return engines[-1]

    app = create_app(make_settings(tile_mode="fixed"), engine_factory=factory)
    with TestClient(app) as client:
        wait_until_ready(client)
        (engine,) = engines
        assert engine.shapes == [("square",), (1, 256), (256, 1), (4, 64), (64, 4)]


@pytest.mark.parametrize("tile_mode", ["fixed", "fit"])
def test_the_pipeline_lists_the_tile_shapes_to_warm_up(
    make_settings: SettingsFactory, tile_mode: str
) -> None:
    with TestClient(create_app(make_settings(tile_mode=tile_mode))) as client:
        wait_until_ready(client)
        shapes = lifecycle_of(client.app).models.default.pipeline.tile_shapes
        # Fixed tiles: the square, then the strips of thin images (16 x 16, 1 x 256, 4 x 64).
        expected = {"fixed": ((16, 16), (1, 256), (256, 1), (4, 64), (64, 4)), "fit": ()}
        assert shapes == expected[tile_mode]
        # A thin image is served in those strips, the same picture as whole-image inference.
        response = _post(client, png_bytes(200, 3))
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (800, 12)
