"""`model=auto`: the clean model for clean input, the robust one for degraded input."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.core.choice import THRESHOLDS, Auto, Fixed, Thresholds, degradations, select
from service.imaging.evidence import Evidence
from tests.service.helpers import lifecycle_of, wait_until_ready
from tests.service.imaging.test_evidence import antialiased_drawing, drawing, scene

SettingsFactory = Callable[..., Settings]
CLEAN = Evidence(
    jpeg_quality=None,
    webp_quality=None,
    noise=0.5,
    sharpness=0.7,
    aliasing=0.6,
    hard_edges=0.0,
    flat=0.02,
)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        pytest.param({}, (), id="clean"),
        pytest.param({"jpeg_quality": THRESHOLDS.jpeg_quality + 1}, (), id="near-lossless-jpeg"),
        pytest.param({"jpeg_quality": THRESHOLDS.jpeg_quality}, ("jpeg",), id="jpeg"),
        pytest.param({"webp_quality": THRESHOLDS.webp_quality}, ("webp",), id="webp"),
        pytest.param({"webp_quality": THRESHOLDS.webp_quality + 1}, (), id="near-lossless-webp"),
        pytest.param({"noise": THRESHOLDS.noise}, ("noise",), id="noise"),
        pytest.param({"aliasing": THRESHOLDS.aliasing}, ("aliasing",), id="aliasing"),
        pytest.param({"sharpness": THRESHOLDS.sharpness}, ("blur",), id="blur"),
        pytest.param({"hard_edges": THRESHOLDS.hard_edges}, ("hard-edges",), id="hard-edges"),
        pytest.param({"flat": THRESHOLDS.flat}, ("flat",), id="flat"),
        pytest.param(
            {"jpeg_quality": THRESHOLDS.jpeg_quality + 1, "noise": THRESHOLDS.noiseless},
            ("noiseless",),
            id="drawing-saved-as-jpeg",
        ),
        pytest.param(
            {"webp_quality": THRESHOLDS.webp_quality + 1, "noise": THRESHOLDS.noiseless},
            ("noiseless",),
            id="drawing-saved-as-webp",
        ),
        pytest.param({"noise": 0.0}, (), id="noiseless-png"),  # flat says if it is drawn
        pytest.param({"jpeg_quality": 80, "noise": 0.0}, ("jpeg",), id="noiseless-low-quality"),
        pytest.param(
            {"jpeg_quality": 40, "noise": 8.0, "sharpness": 0.5, "aliasing": 1.2},
            ("jpeg", "noise", "aliasing", "blur"),
            id="all-degradations",
        ),
        pytest.param(
            dict.fromkeys(("noise", "sharpness", "aliasing", "hard_edges", "flat")),
            (),
            id="too-small-to-tell",  # the clean model
        ),
    ],
)
def test_degradations_are_read_from_the_evidence(change: dict, found: tuple) -> None:
    assert degradations(dataclasses.replace(CLEAN, **change)) == found


def test_other_thresholds_move_the_decision() -> None:
    noisy = dataclasses.replace(CLEAN, noise=2.0)
    assert degradations(noisy) == ()
    assert degradations(noisy, Thresholds(noise=2.0)) == ("noise",)


@pytest.fixture
def folder_app(make_folder_settings: SettingsFactory) -> Any:
    """The test folder's models: `sharp` trained on clean downscales, `soft` on `realistic`."""
    with TestClient(create_app(make_folder_settings())) as client:
        wait_until_ready(client)
        yield client


def test_auto_pairs_the_clean_and_the_robust_model(folder_app: TestClient) -> None:
    models = lifecycle_of(folder_app.app).models
    auto = Auto.of(models)
    assert auto is not None and (auto.clean.name, auto.robust.name) == ("sharp", "soft")
    assert select(models, None) == auto and select(models, "auto") == auto
    assert select(models, "soft") == Fixed(models.get("soft"))


def test_without_a_robust_model_auto_is_the_default(
    make_settings: SettingsFactory,
) -> None:
    with TestClient(create_app(make_settings())) as client:
        wait_until_ready(client)
        models = lifecycle_of(client.app).models
        assert Auto.of(models) is None
        assert select(models, "auto") == Fixed(models.default)
        assert client.get("/models").json()["auto"] is None


def _upscale(client: TestClient, body: bytes, **params: str) -> Any:
    return client.post("/upscale", params=params, content=body, headers={"Content-Type": "image/*"})


def _file(image: np.ndarray, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format, **options)
    return buffer.getvalue()


def _lr(resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """A 64x64 input (the test settings' largest), antialiased unless `resample` says not."""
    return np.asarray(Image.fromarray(scene(256)).resize((64, 64), resample))


def test_a_clean_image_goes_to_the_clean_model(folder_app: TestClient) -> None:
    response = _upscale(folder_app, _file(_lr(), "PNG"))
    assert response.status_code == 200
    assert response.headers["X-Upscaler-Model"] == "sharp"
    evidence = response.headers["X-Upscaler-Evidence"]
    assert evidence.startswith("jpeg-quality=none; webp-quality=none; noise=")
    assert evidence.endswith("found=none")
    assert "choose;dur=" in response.headers["Server-Timing"]


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a_photo_saved_at_high_quality_goes_to_the_clean_model(
    folder_app: TestClient, image_format: str
) -> None:
    response = _upscale(folder_app, _file(_lr(), image_format, quality=95))
    assert response.headers["X-Upscaler-Model"] == "sharp"
    assert response.headers["X-Upscaler-Evidence"].endswith("found=none")


@pytest.mark.parametrize(
    ("degrade", "found"),
    [
        (lambda lr: _file(lr, "JPEG", quality=50), "found=jpeg"),
        (
            lambda lr: _file(_lr(Image.Resampling.NEAREST), "PNG"),
            "found=aliasing",
        ),
        (
            lambda lr: _file(
                np.clip(lr + np.random.default_rng(0).normal(0, 12, lr.shape), 0, 255).astype(
                    np.uint8
                ),
                "PNG",
            ),
            "noise",
        ),
        (lambda lr: _file(drawing(), "PNG"), "found=hard-edges,flat"),
        (lambda lr: _file(antialiased_drawing(), "PNG"), "found=flat"),
        (lambda lr: _file(drawing(), "JPEG", quality=95), "found=noiseless"),
        (lambda lr: _file(lr, "WEBP", quality=50), "found=webp"),
        (lambda lr: _file(drawing(), "WEBP", quality=95), "found=noiseless"),
    ],
    ids=[
        "jpeg",
        "aliasing",
        "noise",
        "hard-drawing",
        "antialiased-drawing",
        "drawing-as-jpeg",
        "webp",
        "drawing-as-webp",
    ],
)
def test_a_degraded_image_goes_to_the_robust_model(
    folder_app: TestClient, degrade: Callable[[np.ndarray], bytes], found: str
) -> None:
    response = _upscale(folder_app, degrade(_lr()))
    assert response.status_code == 200
    assert response.headers["X-Upscaler-Model"] == "soft"
    assert found in response.headers["X-Upscaler-Evidence"]


def test_a_named_model_runs_without_evidence(folder_app: TestClient) -> None:
    response = _upscale(folder_app, _file(_lr(), "JPEG", quality=50), model="sharp")
    assert response.headers["X-Upscaler-Model"] == "sharp"
    assert "X-Upscaler-Evidence" not in response.headers


def test_models_says_auto_is_the_default_and_what_it_chooses_from(
    folder_app: TestClient,
) -> None:
    body = folder_app.get("/models").json()
    assert body["default"] == "auto"
    assert (body["auto"]["clean"], body["auto"]["robust"]) == ("sharp", "soft")
    assert "clean images" in body["auto"]["description"]
