"""The app on every installed engine: headers and /readyz name the engine, device and precision
really running, and tiling, fixed tiles, ensembles and concurrency behave the same."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from tests.service.helpers import SCALE, png_bytes, wait_until_ready


def _upscale(client: TestClient, body: bytes, **params: str) -> object:
    return client.post("/upscale", params=params, files={"file": ("p.png", body)})


def _pixels(response: object) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


@pytest.fixture
def engine_client(make_settings: Callable[..., Settings], engine_name: str) -> TestClient:
    with TestClient(create_app(make_settings(engine=engine_name, precision="fp32"))) as client:
        wait_until_ready(client)
        yield client


def test_headers_and_readyz_name_the_engine(engine_client: TestClient, engine_name: str) -> None:
    response = _upscale(engine_client, png_bytes(5, 3))
    assert response.status_code == 200
    assert response.headers["x-upscaler-engine"] == engine_name
    assert response.headers["x-upscaler-device"] == "CPU"
    assert response.headers["x-upscaler-precision"] == "fp32"
    assert response.headers["x-output-size"] == "20x12"
    body = engine_client.get("/readyz").json()
    assert (body["engine"], body["device"], body["requested_engine"]) == (
        engine_name,
        "CPU",
        engine_name,
    )
    assert (body["precision"], body["fallback"]) == ("fp32", False)


@pytest.mark.parametrize("tile_mode", ["fit", "fixed"])
def test_engines_give_the_same_image(
    make_settings: Callable[..., Settings], tile_mode: str
) -> None:
    """Every engine upscales a multi-tile image to the same pixels (within one grey level)."""
    body = png_bytes(37, 29, seed=3)
    images = []
    from tests.service.conftest import AVAILABLE_ENGINES

    for name in AVAILABLE_ENGINES:
        settings = make_settings(engine=name, tile_mode=tile_mode, precision="fp32")
        with TestClient(create_app(settings)) as client:
            wait_until_ready(client)
            response = _upscale(client, body)
            assert response.status_code == 200
            images.append(_pixels(response).astype(int))
    assert images[0].shape == (29 * SCALE, 37 * SCALE, 3)
    for image in images[1:]:
        assert np.abs(image - images[0]).max() <= 1


def test_ensemble_runs_on_every_engine(engine_client: TestClient) -> None:
    response = _upscale(engine_client, png_bytes(8, 6), quality="max")
    assert response.status_code == 200
    assert response.headers["x-upscaler-quality"] == "max"
    assert response.headers["x-output-size"] == "32x24"


def test_concurrent_requests_on_every_engine(
    make_settings: Callable[..., Settings], engine_name: str
) -> None:
    settings = make_settings(engine=engine_name, max_concurrency=3, max_queue=8)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        bodies = [png_bytes(20, 17, seed=seed) for seed in range(6)]
        expected = [_pixels(_upscale(client, body)) for body in bodies]
        got: list[np.ndarray | None] = [None] * len(bodies)

        def send(index: int) -> None:
            got[index] = _pixels(_upscale(client, bodies[index]))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, image in enumerate(got):
        np.testing.assert_array_equal(image, expected[index])


def test_a_requested_engine_that_cannot_load_is_a_reported_fallback(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with TestClient(create_app(make_settings(engine="openvino"))) as client:
        wait_until_ready(client)
        body = client.get("/readyz").json()
        assert (body["engine"], body["requested_engine"], body["fallback"]) == (
            "onnxruntime",
            "openvino",
            True,
        )
        assert "openvino is not installed" in body["fallback_reason"]
        response = _upscale(client, png_bytes(4, 4))
        assert response.headers["x-upscaler-engine"] == "onnxruntime"
