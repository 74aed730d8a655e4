"""Fixtures of the service tests: model files, settings and a started app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.core.engines.ortconfig import openvino_installed
from tests.service.helpers import CPU_ONLY, build_model, wait_until_ready

AVAILABLE_ENGINES = ["onnxruntime"] + (["openvino"] if openvino_installed() else [])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def conv_model_path(model_dir: Path) -> Path:
    """A model whose receptive field is 3x3: one pixel of overlap makes tiling exact."""
    return build_model(model_dir / "conv.onnx")


@pytest.fixture(scope="session")
def deep_model_path(model_dir: Path) -> Path:
    """A model whose receptive field reaches 7 pixels in every direction."""
    return build_model(model_dir / "deep.onnx", hidden_layers=3, seed=1)


@pytest.fixture(scope="session")
def unlabelled_model_path(model_dir: Path) -> Path:
    """The conv model without any metadata, so the scale must be probed."""
    return build_model(model_dir / "unlabelled.onnx", metadata={})


@pytest.fixture
def make_settings(conv_model_path: Path) -> Callable[..., Settings]:
    """Settings for a small, fast, CPU-only app; keyword arguments override fields."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "model_path": conv_model_path,
            "providers": CPU_ONLY,
            # Pinned, so that tests about providers do not depend on OpenVINO being installed;
            # tests that run on every engine override it with the `engine_name` fixture.
            "engine": "onnxruntime",
            "tile_size": 16,
            "tile_overlap": 2,
            "intra_op_threads": 1,
            "max_upload_bytes": 256 * 1024,
            "max_input_pixels": 64 * 64,
            "max_concurrency": 1,
            "max_queue": 2,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(params=AVAILABLE_ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    """Each engine installed here (onnxruntime always, OpenVINO when importable)."""
    return request.param


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """A started, warmed-up app with the tiny conv model."""
    with TestClient(create_app(make_settings())) as test_client:
        wait_until_ready(test_client)
        yield test_client


#: The models of `models_folder`: two x4 models with different weights, so different outputs.
FOLDER_MODELS = ("sharp", "soft")


@pytest.fixture(scope="session")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder as the service reads it: `sharp` and `soft`, each `NAME.onnx` with its
    card `NAME.json`, plus the fp16 copy `sharp_fp16.onnx`, which is no model of its own."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("served-models")
    sharp = build_model(folder / "sharp.onnx", seed=3)
    build_model(folder / "soft.onnx", seed=4)
    shutil.copy(sharp, folder / "sharp_fp16.onnx")
    own, bicubic = "EDSR x4 (this model)", {"Set5": {"psnr": 28.4}, "Set14": {"psnr": 26.1}}
    (folder / "sharp.json").write_text(
        json.dumps(
            {
                "description": "Sharp test model.",
                "degradation": "bicubic",
                "evaluation": {
                    "lr_kinds": {"pil": "Pillow antialiased bicubic (standard)"},
                    "results": {
                        "pil": {
                            "bicubic": bicubic,
                            own: {"Set5": {"psnr": 31.6171, "ssim": 0.88}, "Set14": {"psnr": 28.3}},
                            f"{own}, self-ensemble": {"Set5": {"psnr": 31.8}},
                        }
                    },
                },
            }
        )
    )
    # As a training run writes it: the degradation only in the training configuration.
    (folder / "soft.json").write_text(
        json.dumps({"scale": "4", "training": {"config": {"degradation": "realistic"}}})
    )
    return folder


@pytest.fixture
def make_folder_settings(
    make_settings: Callable[..., Settings], models_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    """`make_settings` serving every model of `models_folder` (MODEL_PATH unset, default
    `sharp`); keyword arguments override fields."""
    monkeypatch.delenv("UPSCALER_MODEL_PATH", raising=False)

    def make(**overrides: object) -> Settings:
        values = {"models_dir": models_folder, "default_model": "sharp", **overrides}
        return Settings(**make_settings(**values).model_dump(exclude={"model_path"}))

    return make
