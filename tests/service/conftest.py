"""Fixtures of the service tests: model files, settings and a started app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.service.helpers import CPU_ONLY, build_model, wait_until_ready


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


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """A started, warmed-up app with the tiny conv model."""
    with TestClient(create_app(make_settings())) as test_client:
        wait_until_ready(test_client)
        yield test_client
