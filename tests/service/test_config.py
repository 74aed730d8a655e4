"""Settings: defaults, environment variables and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import DEFAULT_PROVIDERS, Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("UPSCALER_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_path == Path("models/edsr_x4.onnx")
    assert settings.providers == list(DEFAULT_PROVIDERS)
    assert (settings.tile_size, settings.tile_overlap, settings.tile_batch_size) == (192, 8, 1)
    assert (settings.tile_mode, settings.precision) == ("auto", "auto")
    assert (settings.graph_optimization, settings.cpu_mem_arena) == ("all", True)
    assert (settings.png_encoder, settings.encode_threads, settings.jpeg_quality) == (
        "strips",
        0,
        92,
    )
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.max_input_pixels == 2048 * 2048
    assert (settings.max_concurrency, settings.max_queue) == (1, 8)
    assert settings.png_compress_level == 1
    assert (settings.intra_op_threads, settings.inter_op_threads) == (0, 0)


def test_environment_variables_use_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALER_MODEL_PATH", "/models/other.onnx")
    monkeypatch.setenv("UPSCALER_TILE_SIZE", "256")
    monkeypatch.setenv("UPSCALER_MAX_QUEUE", "0")
    settings = Settings()
    assert settings.model_path == Path("/models/other.onnx")
    assert settings.tile_size == 256
    assert settings.max_queue == 0


@pytest.mark.parametrize(
    "value",
    [
        "CUDAExecutionProvider,CPUExecutionProvider",
        '["CUDAExecutionProvider", "CPUExecutionProvider"]',
        "cuda, cpu",
    ],
)
def test_providers_accept_lists_and_aliases(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("UPSCALER_PROVIDERS", value)
    assert Settings().providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_model_choice_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.models_dir, defaults.default_model) == (Path("models"), "edsr_x4")
    # Left at its default, MODEL_PATH is not "set": the whole folder is served.
    assert "model_path" not in defaults.model_fields_set
    monkeypatch.setenv("UPSCALER_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("UPSCALER_DEFAULT_MODEL", "edsr_x4_real")
    settings = Settings()
    assert (settings.models_dir, settings.default_model) == (Path("/srv/models"), "edsr_x4_real")
    with pytest.raises(ValidationError):
        Settings(default_model="")


def test_empty_provider_list_is_rejected() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        Settings(providers="")


def test_tile_must_be_larger_than_both_overlaps() -> None:
    with pytest.raises(ValidationError, match="twice"):
        Settings(tile_size=32, tile_overlap=16)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("png_compress_level", 10),
        ("max_concurrency", 0),
        ("max_upload_bytes", 0),
        ("tile_overlap", -1),
    ],
)
def test_out_of_range_values_are_rejected(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_performance_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALER_PRECISION", "fp16")
    monkeypatch.setenv("UPSCALER_CPU_MEM_ARENA", "false")
    monkeypatch.setenv("UPSCALER_GRAPH_OPTIMIZATION", "extended")
    monkeypatch.setenv("UPSCALER_TILE_MODE", "fixed")
    monkeypatch.setenv("UPSCALER_PNG_ENCODER", "pillow")
    monkeypatch.setenv("UPSCALER_JPEG_QUALITY", "80")
    settings = Settings()
    assert (settings.precision, settings.cpu_mem_arena, settings.graph_optimization) == (
        "fp16",
        False,
        "extended",
    )
    assert settings.tile_mode == "fixed"
    assert (settings.png_encoder, settings.jpeg_quality) == ("pillow", 80)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("precision", "int8"),
        ("graph_optimization", "max"),
        ("tile_mode", "dynamic"),
        ("png_encoder", "libpng"),
        ("jpeg_quality", 0),
        ("jpeg_quality", 101),
        ("encode_threads", -1),
    ],
)
def test_performance_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_the_generated_settings_table_in_docs_api_is_current() -> None:
    # docs/api.md holds the project's one settings table, written by scripts/settings_table.py.
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "settings_table", root / "scripts" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    text = (root / "docs" / "api.md").read_text()
    assert table.render_table() in text, (
        "docs/api.md is stale: run `scripts/settings_table.py --write`"
    )
    assert text.count(table.BEGIN) == 1
