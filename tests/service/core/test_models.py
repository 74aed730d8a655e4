"""Model choice: every model in the models folder served from one app, picked per request."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.core.engines import Engine, OnnxEngine, create_engine
from service.core.registry import DEFAULT_DEGRADATION, ModelCard, model_files, serves_single_file
from service.exceptions import ModelLoadError
from tests.service.api.test_app import _asgi_post, _started, _wait_for
from tests.service.conftest import FOLDER_MODELS
from tests.service.helpers import (
    SCALE,
    build_model,
    encode,
    lifecycle_of,
    noise_image,
    to_uint8,
    whole_image_runner,
)
from tests.service.helpers import wait_until_ready as wait_until_warm

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def folder_client(make_folder_settings: SettingsFactory) -> Any:
    with TestClient(create_app(make_folder_settings())) as client:
        wait_until_warm(client)
        yield client


def _upscale(client: TestClient, pixels: np.ndarray, model: str | None = None) -> Any:
    params = {} if model is None else {"model": model}
    body = encode(Image.fromarray(pixels))
    return client.post(
        "/upscale", params=params, content=body, headers={"Content-Type": "image/png"}
    )


def _decoded(response: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _reference(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    """The model file run on the whole image by its own onnxruntime session (the test models
    see 3x3 pixels, so the service's fitted tiles with 2 pixels of overlap give the same)."""
    return to_uint8(whole_image_runner(model_path)(pixels))


# --- Which files are served ----------------------------------------------------------------------


def test_the_folder_serves_each_model_once_and_skips_fp16_copies(
    make_folder_settings: SettingsFactory, models_folder: Path
) -> None:
    settings = make_folder_settings()
    assert not serves_single_file(settings)
    files, default = model_files(settings)
    assert files == {name: models_folder / f"{name}.onnx" for name in FOLDER_MODELS}
    assert default == "sharp"


def test_model_path_serves_that_file_alone_named_by_its_stem(
    make_settings: SettingsFactory, conv_model_path: Path, models_folder: Path
) -> None:
    # MODEL_PATH wins over the folder and the default-model setting.
    settings = make_settings(models_dir=models_folder, default_model="soft")
    assert serves_single_file(settings)
    assert model_files(settings) == ({"conv": conv_model_path}, "conv")


def test_model_path_from_the_environment_serves_one_file(
    monkeypatch: pytest.MonkeyPatch, conv_model_path: Path
) -> None:
    monkeypatch.setenv("UPSCALER_MODEL_PATH", str(conv_model_path))
    assert serves_single_file(Settings())
    monkeypatch.delenv("UPSCALER_MODEL_PATH")
    assert not serves_single_file(Settings())


def test_a_default_model_that_is_not_in_the_folder_refuses_to_start(
    make_folder_settings: SettingsFactory,
) -> None:
    with (
        pytest.raises(ModelLoadError, match=r"default model 'edsr' .* holds sharp, soft"),
        TestClient(create_app(make_folder_settings(default_model="edsr"))),
    ):
        pass


def test_models_serves_only_the_models_it_names(make_folder_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_folder_settings(models="sharp"))) as client:
        wait_until_warm(client)
        assert [model["name"] for model in client.get("/models").json()["models"]] == ["sharp"]
        assert [model["name"] for model in client.get("/readyz").json()["models"]] == ["sharp"]
        assert _upscale(client, noise_image(4, 4), "soft").status_code == 422


@pytest.mark.parametrize(
    ("models", "refusal"),
    [
        ("sharp,edsr", r"UPSCALER_MODELS names 'edsr', not in .* holds sharp, soft"),
        ("soft", r"default model 'sharp' .* is not among UPSCALER_MODELS \(soft\)"),
    ],
    ids=["unknown-name", "default-left-out"],
)
def test_models_naming_what_cannot_be_served_refuses_to_start(
    make_folder_settings: SettingsFactory, models: str, refusal: str
) -> None:
    with pytest.raises(ModelLoadError, match=refusal):
        model_files(make_folder_settings(models=models))


def test_an_empty_or_missing_folder_refuses_to_start(
    make_folder_settings: SettingsFactory, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model"):
        model_files(make_folder_settings(models_dir=tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="models folder not found"):
        model_files(make_folder_settings(models_dir=tmp_path / "absent"))


def test_a_broken_card_refuses_to_start_and_a_missing_one_is_allowed(
    tmp_path: Path, conv_model_path: Path
) -> None:
    model = shutil.copy(conv_model_path, tmp_path / "bare.onnx")
    card = ModelCard.for_model(Path(model), {"scale": "4", "blocks": "2", "filters": "8"})
    assert (card.card_path, card.degradation, dict(card.benchmarks)) == (None, "bicubic", {})
    assert (
        card.description == "EDSR x4 (2 blocks x 8 filters), trained on the 'bicubic' degradation"
    )
    (tmp_path / "bare.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"bare\.json cannot be read"):
        ModelCard.for_model(Path(model), {})


# --- Choosing per request ------------------------------------------------------------------------


def test_each_request_runs_the_model_it_names(
    folder_client: TestClient, models_folder: Path
) -> None:
    pixels = noise_image(20, 24)
    outputs = {}
    for name in FOLDER_MODELS:
        response = _upscale(folder_client, pixels, name)
        assert response.status_code == 200
        assert response.headers["X-Upscaler-Model"] == name
        outputs[name] = _decoded(response)
        expected = _reference(models_folder / f"{name}.onnx", pixels)
        assert np.abs(outputs[name].astype(int) - expected).max() <= 1
    # The two models really differ, so the comparisons above tell them apart.
    assert np.abs(outputs["sharp"].astype(int) - outputs["soft"]).mean() > 5


def test_without_the_parameter_the_default_model_runs(
    make_folder_settings: SettingsFactory, models_folder: Path, tmp_path: Path
) -> None:
    # Two models trained on clean downscales: no `auto` (test_choice.py), the default runs.
    for name in FOLDER_MODELS:
        shutil.copy(models_folder / f"{name}.onnx", tmp_path)
        (tmp_path / f"{name}.json").write_text('{"degradation": "bicubic"}')
    pixels = noise_image(12, 12)
    settings = make_folder_settings(models_dir=tmp_path, default_model="soft")
    with TestClient(create_app(settings)) as client:
        wait_until_warm(client)
        response = _upscale(client, pixels)
        assert (response.status_code, response.headers["X-Upscaler-Model"]) == (200, "soft")
        expected = _reference(models_folder / "soft.onnx", pixels)
        assert np.abs(_decoded(response).astype(int) - expected).max() <= 1
        assert _upscale(client, pixels, "").headers["X-Upscaler-Model"] == "soft"


def test_switching_models_loads_nothing(make_folder_settings: SettingsFactory) -> None:
    loaded: list[Path] = []

    def counting_factory(settings: Settings) -> Engine:
        loaded.append(settings.model_path)
        return create_engine(settings)

    app = create_app(make_folder_settings(), engine_factory=counting_factory)
    with TestClient(app) as client:
        wait_until_warm(client)
        assert [path.stem for path in loaded] == ["sharp", "soft"]
        engines = {model.name: model.engine for model in lifecycle_of(app).models}
        pixels = noise_image(8, 8)
        for name in ["soft", "sharp", "soft", "sharp"]:
            assert _upscale(client, pixels, name).status_code == 200
        assert len(loaded) == 2
        assert {model.name: model.engine for model in lifecycle_of(app).models} == engines


def test_an_unknown_model_is_refused_before_the_upload_is_read(
    make_folder_settings: SettingsFactory,
) -> None:
    app = create_app(make_folder_settings())
    consumed = [0]

    async def scenario() -> tuple[int, bytes]:
        async with _started(app):
            status, _, body = await _asgi_post(
                app, [b"\x00" * 1024], {"content-type": "image/png"}, consumed, query=b"model=edsr"
            )
            return status, body

    status, body = asyncio.run(scenario())
    assert status == 422
    detail = json.loads(body)["detail"]
    assert "model='edsr'" in detail and "'sharp', 'soft'" in detail
    assert consumed[0] == 0


# --- Listing -------------------------------------------------------------------------------------


def test_models_lists_each_model_with_its_card(folder_client: TestClient) -> None:
    body = folder_client.get("/models").json()
    assert body["default"] == "auto"  # a clean and a robust model: test_choice.py
    sharp, soft = body["models"]
    assert sharp.pop("seconds_per_megapixel") > 0  # test_estimates.py
    assert sharp == {
        "name": "sharp",
        "description": "Sharp test model.",
        "degradation": "bicubic",
        "scale": SCALE,
        "benchmarks": {
            "pil": {
                "label": "Pillow antialiased bicubic (standard)",
                "psnr": {"Set5": 31.617, "Set14": 28.3},
                "bicubic_psnr": {"Set5": 28.4, "Set14": 26.1},
            }
        },
    }
    assert (soft["name"], soft["degradation"], soft["benchmarks"]) == ("soft", "realistic", {})
    assert "realistic" in soft["description"]


def test_the_default_model_is_listed_first(make_folder_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_folder_settings(default_model="soft"))) as client:
        body = client.get("/models").json()
        assert [model["name"] for model in body["models"]] == ["soft", "sharp"]


def test_models_answers_503_before_the_models_are_loaded(
    make_folder_settings: SettingsFactory,
) -> None:
    client = TestClient(create_app(make_folder_settings()))  # lifespan not started
    assert client.get("/models").status_code == 503


def test_the_shipped_card_gives_description_degradation_and_benchmarks() -> None:
    shipped = Path(__file__).resolve().parents[3] / "models" / "edsr_x4.onnx"
    if not shipped.with_suffix(".json").is_file():
        pytest.skip("the shipped model card is not in this checkout")
    card = ModelCard.for_model(shipped, {})
    assert card.degradation == DEFAULT_DEGRADATION
    assert set(card.benchmarks["pil"]["psnr"]) == {"Set5", "Set14", "BSD100"}
    assert card.benchmarks["pil"]["psnr"]["Set5"] > card.benchmarks["pil"]["bicubic_psnr"]["Set5"]


def test_readyz_lists_every_model(folder_client: TestClient, models_folder: Path) -> None:
    body = folder_client.get("/readyz").json()
    # A clean and a robust model: `auto` is the default; the top-level fields describe
    # UPSCALER_DEFAULT_MODEL's model.
    assert (body["status"], body["default_model"], body["model"]["name"]) == (
        "ready",
        "auto",
        "sharp",
    )
    assert body["model"]["path"] == str(models_folder / "sharp.onnx")
    listed = {model["name"]: model for model in body["models"]}
    assert list(listed) == ["sharp", "soft"]
    assert (listed["sharp"]["default"], listed["soft"]["default"]) == (False, False)
    assert listed["soft"]["path"] == str(models_folder / "soft.onnx")
    assert listed["soft"]["degradation"] == "realistic"
    assert all(model["warmup_ms"] is not None for model in listed.values())
    assert all(model["provider"] == "CPUExecutionProvider" for model in listed.values())


# --- Warm-up -------------------------------------------------------------------------------------


class _HeldWarmUp(OnnxEngine):
    """Warms up only once released; the test builds it for one model of the folder."""

    def __init__(self, settings: Settings) -> None:
        import threading

        self.entered, self.release = threading.Event(), threading.Event()
        super().__init__(settings)

    def warm_up(self) -> float:
        self.entered.set()
        assert self.release.wait(timeout=30)
        return super().warm_up()


def test_ready_only_once_every_model_is_warm(make_folder_settings: SettingsFactory) -> None:
    held: list[_HeldWarmUp] = []

    def factory(settings: Settings) -> Engine:
        if settings.model_path.stem != "soft":
            return create_engine(settings)
        held.append(_HeldWarmUp(settings))
        return held[0]

    with TestClient(create_app(make_folder_settings(), engine_factory=factory)) as client:
        assert held[0].entered.wait(timeout=30)  # the default warmed up first, then soft began
        response = client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (503, "warming_up")
        warmups = {model["name"]: model["warmup_ms"] for model in response.json()["models"]}
        assert warmups["sharp"] is not None and warmups["soft"] is None
        refused = _upscale(client, noise_image(4, 4), "sharp")
        assert refused.status_code == 503
        held[0].release.set()
        wait_until_warm(client)
        assert client.get("/readyz").status_code == 200


def test_a_model_that_fails_to_warm_up_is_named(make_folder_settings: SettingsFactory) -> None:
    class Broken(OnnxEngine):
        def warm_up(self) -> float:
            raise RuntimeError("out of GPU memory")

    def factory(settings: Settings) -> Engine:
        broken = settings.model_path.stem == "soft"
        return Broken(settings) if broken else create_engine(settings)

    with TestClient(create_app(make_folder_settings(), engine_factory=factory)) as client:
        _wait_for(lambda: lifecycle_of(client.app).warmup_error is not None)
        response = client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (503, "failed")
        assert response.json()["detail"] == "model 'soft': out of GPU memory"


# --- Metrics -------------------------------------------------------------------------------------


def test_upscale_metrics_carry_the_model_label(folder_client: TestClient) -> None:
    pixels = noise_image(3, 5)
    assert _upscale(folder_client, pixels, "soft").status_code == 200
    assert _upscale(folder_client, pixels, "sharp").status_code == 200
    assert _upscale(folder_client, pixels, "sharp").status_code == 200
    assert _upscale(folder_client, pixels, "nope").status_code == 422
    text = folder_client.get("/metrics").text
    assert 'upscaler_requests_total{model="sharp",status="200"} 2.0' in text
    assert 'upscaler_requests_total{model="soft",status="200"} 1.0' in text
    # Refused before a model was chosen: counted without one, never under the unknown name.
    assert 'upscaler_requests_total{model="",status="422"} 1.0' in text
    assert "nope" not in text
    assert 'upscaler_request_seconds_count{model="soft"} 1.0' in text
    assert 'upscaler_inference_seconds_count{model="sharp"} 2.0' in text
    assert 'upscaler_pixels_total{model="soft",side="input"} 15.0' in text
    assert 'upscaler_pixels_total{model="sharp",side="output"} 480.0' in text
    for name, default in (("sharp", "true"), ("soft", "false")):
        info = (
            f'upscaler_model_info{{default="{default}",model="{name}",precision="fp32",'
            f'provider="CPUExecutionProvider"}} 1.0'
        )
        assert info in text


def test_an_unused_model_shows_zero_rather_than_no_series(folder_client: TestClient) -> None:
    text = folder_client.get("/metrics").text
    for name in FOLDER_MODELS:
        assert f'upscaler_inference_seconds_count{{model="{name}"}} 0.0' in text


def test_openapi_documents_the_model_parameter_and_list(folder_client: TestClient) -> None:
    schema = folder_client.get("/openapi.json").json()
    operation = schema["paths"]["/upscale"]["post"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert names.index("model") < names.index("quality")
    assert "model" in operation["responses"]["422"]["description"]
    assert "X-Upscaler-Model" in operation["responses"]["200"]["headers"]
    assert "/models" in schema["paths"]


def test_a_folder_with_one_model_serves_it_by_name(
    make_folder_settings: SettingsFactory, tmp_path: Path
) -> None:
    build_model(tmp_path / "only.onnx", seed=5)
    settings = make_folder_settings(models_dir=tmp_path, default_model="only")
    with TestClient(create_app(settings)) as client:
        wait_until_warm(client)
        assert client.get("/models").json()["default"] == "only"
        assert _upscale(client, noise_image(4, 4)).headers["X-Upscaler-Model"] == "only"
