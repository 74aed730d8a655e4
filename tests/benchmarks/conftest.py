"""Fixtures of the harness tests: the test suite's tiny model and a smoke-preset context."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.context import CPU_ONLY, BenchContext, service_settings
from benchmarks.presets import SMOKE
from tests.service.helpers import build_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("bench") / "tiny_x4.onnx", hidden_layers=1)


@pytest.fixture
def ctx(tiny_model: Path) -> BenchContext:
    settings = service_settings(
        tiny_model, CPU_ONLY, tile_size=16, tile_overlap=4, intra_op_threads=1
    )
    return BenchContext(model_path=tiny_model, preset=SMOKE, settings=settings, verbose=False)
