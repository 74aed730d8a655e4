"""The engines: loading, contract checks, scale, providers and fallback, and `ModelInfo`.

Tests taking `engine_name` run on every engine installed here, through `create_engine` (the
service's factory); the provider tests are onnxruntime's own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.config import DEFAULT_PROVIDERS, Settings
from service.core.engines import Engine, OnnxEngine, create_engine
from service.core.engines.ortconfig import cuda_usable
from service.exceptions import ModelLoadError
from tests.service.helpers import CPU_ONLY, SCALE


def _engine(path: Path, **overrides: object) -> OnnxEngine:
    values = {"providers": CPU_ONLY, "intra_op_threads": 1, "tile_size": 8, "tile_overlap": 2}
    return OnnxEngine(Settings(model_path=path, **{**values, **overrides}))


def _any_engine(path: Path, engine: str, **overrides: object) -> Engine:
    values = {"providers": CPU_ONLY, "intra_op_threads": 1, "tile_size": 8, "tile_overlap": 2}
    settings = Settings(model_path=path, engine=engine, **{**values, **overrides})
    built = create_engine(settings)
    assert (built.info.engine, built.info.fallback) == (engine, False)
    return built


def test_reads_scale_metadata_and_names(conv_model_path: Path, engine_name: str) -> None:
    info = _any_engine(conv_model_path, engine_name).info
    assert info.scale == SCALE
    assert info.metadata["scale"] == "4"
    assert info.metadata["training_data"] == "none (test fixture)"
    assert (info.input_name, info.output_name) == ("lr", "sr")
    assert info.path == conv_model_path


def test_probes_scale_when_metadata_is_missing(
    unlabelled_model_path: Path, engine_name: str
) -> None:
    info = _any_engine(unlabelled_model_path, engine_name).info
    assert info.metadata == {}
    assert info.scale == SCALE


def test_run_upscales_a_batch(conv_model_path: Path, engine_name: str) -> None:
    output = _any_engine(conv_model_path, engine_name).run(np.zeros((2, 5, 7, 3), dtype=np.uint8))
    assert output.shape == (2, 5 * SCALE, 7 * SCALE, 3)
    assert output.dtype == np.float32


@pytest.mark.parametrize("tile_mode", ["fit", "fixed"])
def test_warm_up_runs_the_tile_shape(
    conv_model_path: Path, engine_name: str, tile_mode: str
) -> None:
    engine = _any_engine(
        conv_model_path, engine_name, tile_size=12, tile_batch_size=2, tile_mode=tile_mode
    )
    assert engine.info.warmup_seconds is None
    assert engine.warm_up() >= 0
    assert engine.info.warmup_seconds is not None


def test_warm_up_measures_the_model_time_per_megapixel(conv_model_path: Path) -> None:
    engine = _any_engine(conv_model_path, "onnxruntime", tile_size=12)
    assert engine.info.seconds_per_megapixel is None
    engine.warm_up()
    assert engine.info.seconds_per_megapixel is not None and engine.info.seconds_per_megapixel > 0


def test_settings_describe_the_engine(conv_model_path: Path, engine_name: str) -> None:
    settings = Settings(
        model_path=conv_model_path,
        providers=CPU_ONLY,
        engine=engine_name,
        tile_size=24,
        tile_overlap=4,
        tile_batch_size=3,
    )
    info = create_engine(settings).info
    assert (info.tile_size, info.batch_size, info.tile_mode) == (24, 3, "fit")
    assert (info.engine, info.device, info.requested_engine) == (engine_name, "CPU", engine_name)
    fixed = create_engine(settings.model_copy(update={"tile_mode": "fixed"}))
    assert fixed.info.tile_mode == "fixed"


def test_cpu_only_is_not_a_fallback(conv_model_path: Path) -> None:
    info = _engine(conv_model_path).info
    assert info.providers == ("CPUExecutionProvider",)
    assert info.provider == "CPUExecutionProvider"
    assert not info.fallback
    assert info.fallback_reason is None


@pytest.mark.skipif(cuda_usable(), reason="this host has a CUDA driver")
def test_default_providers_fall_back_to_cpu_without_cuda(
    conv_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.core.engines"):
        info = _engine(conv_model_path, providers=list(DEFAULT_PROVIDERS)).info
    assert info.requested_providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert info.providers == ("CPUExecutionProvider",)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # onnxruntime-gpu without CUDA libraries: it was asked for CUDA and silently fell back.
        assert info.fallback
        assert "CUDAExecutionProvider" in info.fallback_reason
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("CUDAExecutionProvider" in m and "CPUExecutionProvider" in m for m in warnings)


def test_cpu_is_substituted_and_flagged_when_nothing_requested_is_usable(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    info = _engine(conv_model_path, providers=["CUDAExecutionProvider"]).info
    assert info.providers == ("CPUExecutionProvider",)
    assert info.fallback
    assert "no requested provider is usable" in info.fallback_reason
    assert info.skipped_providers == {
        "CUDAExecutionProvider": "not included in this onnxruntime build"
    }


def test_unknown_provider_is_refused(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown execution provider 'GPUProvider'"):
        _engine(conv_model_path, providers=["GPUProvider"])


def test_missing_model_file_names_the_path(tmp_path: Path, engine_name: str) -> None:
    missing = tmp_path / "nowhere" / "edsr_x4.onnx"
    with pytest.raises(ModelLoadError, match=f"model file not found: {missing}"):
        _any_engine(missing, engine_name)


def test_directory_is_not_a_model(tmp_path: Path, engine_name: str) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        _any_engine(tmp_path, engine_name)


def test_garbage_model_file_is_refused(tmp_path: Path, engine_name: str) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=f"cannot load model {broken}"):
        _any_engine(broken, engine_name)


def test_model_breaking_the_contract_is_refused(tmp_path: Path, engine_name: str) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["lr"], ["sr"])],
        "grey",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", "H", "W", 1])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", "H", "W", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "grey.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="3 channels"):
        _any_engine(path, engine_name)
