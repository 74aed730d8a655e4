"""The onnxruntime wrapper: loading, contract checks, scale, providers and fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service import runtime as runtime_module
from service.config import Settings
from service.exceptions import ModelLoadError
from service.ortconfig import cuda_usable
from service.runtime import UpscalerRuntime, resolve_providers
from tests.service.helpers import CPU_ONLY, SCALE


def _runtime(path: Path, **options: object) -> UpscalerRuntime:
    options = {"providers": CPU_ONLY, "intra_op_threads": 1, "tile_size": 8, **options}
    return UpscalerRuntime(path, **options)


def test_reads_scale_metadata_and_names(conv_model_path: Path) -> None:
    runtime = _runtime(conv_model_path)
    assert runtime.scale == SCALE
    assert runtime.metadata["scale"] == "4"
    assert runtime.metadata["training_data"] == "none (test fixture)"
    assert (runtime.input_name, runtime.output_name) == ("lr", "sr")
    assert runtime.model_path == conv_model_path


def test_probes_scale_when_metadata_is_missing(unlabelled_model_path: Path) -> None:
    runtime = _runtime(unlabelled_model_path)
    assert runtime.metadata == {}
    assert runtime.scale == SCALE


def test_run_upscales_a_batch(conv_model_path: Path) -> None:
    output = _runtime(conv_model_path).run(np.zeros((2, 5, 7, 3), dtype=np.uint8))
    assert output.shape == (2, 5 * SCALE, 7 * SCALE, 3)
    assert output.dtype == np.float32


def test_warm_up_runs_the_tile_shape(conv_model_path: Path) -> None:
    runtime = _runtime(conv_model_path, tile_size=12, batch_size=2)
    assert runtime.warmup_seconds is None
    assert runtime.warm_up() >= 0
    assert runtime.warmup_seconds is not None


def test_from_settings(conv_model_path: Path) -> None:
    settings = Settings(
        model_path=conv_model_path,
        providers=CPU_ONLY,
        tile_size=24,
        tile_overlap=4,
        tile_batch_size=3,
    )
    runtime = UpscalerRuntime.from_settings(settings)
    assert (runtime.tile_size, runtime.batch_size) == (24, 3)


def test_cpu_only_is_not_a_fallback(conv_model_path: Path) -> None:
    runtime = _runtime(conv_model_path)
    assert runtime.providers == ("CPUExecutionProvider",)
    assert runtime.primary_provider == "CPUExecutionProvider"
    assert not runtime.fallback
    assert runtime.fallback_reason is None


@pytest.mark.skipif(cuda_usable(), reason="this host has a CUDA driver")
def test_default_providers_fall_back_to_cpu_without_cuda(
    conv_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.runtime"):
        runtime = UpscalerRuntime(conv_model_path, intra_op_threads=1, tile_size=8)
    assert runtime.requested_providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert runtime.providers == ("CPUExecutionProvider",)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # onnxruntime-gpu without CUDA libraries: it was asked for CUDA and silently fell back.
        assert runtime.fallback
        assert "CUDAExecutionProvider" in runtime.fallback_reason
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("CUDAExecutionProvider" in m and "CPUExecutionProvider" in m for m in warnings)


def test_tensorrt_is_skipped_when_its_library_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "tensorrt_libraries_loadable", lambda: False)
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    )
    plan = resolve_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert plan.attempted == ("CPUExecutionProvider",)
    assert "TensorRT library" in plan.skipped["TensorrtExecutionProvider"]


def test_tensorrt_is_tried_when_its_library_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "tensorrt_libraries_loadable", lambda: True)
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    )
    plan = resolve_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert plan.attempted == ("TensorrtExecutionProvider", "CPUExecutionProvider")


def test_providers_missing_from_the_build_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    plan = resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert plan.attempted == ("CPUExecutionProvider",)
    assert plan.skipped == {"CUDAExecutionProvider": "not included in this onnxruntime build"}


def test_cpu_is_substituted_and_flagged_when_nothing_requested_is_usable(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runtime = _runtime(conv_model_path, providers=["CUDAExecutionProvider"])
    assert runtime.providers == ("CPUExecutionProvider",)
    assert runtime.fallback
    assert "no requested provider is usable" in runtime.fallback_reason
    assert runtime.skipped_providers == {
        "CUDAExecutionProvider": "not included in this onnxruntime build"
    }


def test_unknown_provider_is_refused(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown execution provider 'GPUProvider'"):
        _runtime(conv_model_path, providers=["GPUProvider"])


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "edsr_x4.onnx"
    with pytest.raises(ModelLoadError, match=f"model file not found: {missing}"):
        _runtime(missing)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        _runtime(tmp_path)


def test_garbage_model_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=f"cannot load model {broken}"):
        _runtime(broken)


def test_model_breaking_the_contract_is_refused(tmp_path: Path) -> None:
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
        _runtime(path)
