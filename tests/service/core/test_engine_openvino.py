"""The engine seam: `create_engine`'s choice and fallbacks, OpenVINO's precision, compile options,
fixed shapes and concurrent runs.

The pure choices run everywhere; the tests that compile a model skip where OpenVINO is missing.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.core import engines as engine_module
from service.core.engines import OnnxEngine, create_engine
from service.core.engines.openvino_engine import (
    PROVIDER,
    EngineUnavailableError,
    choose_openvino_precision,
    openvino_config,
)
from service.core.engines.ortconfig import auto_engine, openvino_installed
from tests.service.helpers import CPU_ONLY, SCALE, batch_runner, noise_image

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="openvino not installed")
NO_BF16 = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # an AVX2 CPU, as on the CI machine
WITH_BF16 = ["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"]


def _settings(path: Path, **overrides: object) -> Settings:
    values = {"providers": CPU_ONLY, "intra_op_threads": 1, "tile_size": 8, "tile_overlap": 2}
    return Settings(model_path=path, **{**values, **overrides})


# --- Pure choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_running", "openvino_available", "expected"),
    [
        (True, True, "onnxruntime"),
        (True, False, "onnxruntime"),
        (False, True, "openvino"),
        (False, False, "onnxruntime"),
    ],
)
def test_auto_engine(gpu_running: bool, openvino_available: bool, expected: str) -> None:
    assert auto_engine(gpu_running=gpu_running, openvino_available=openvino_available) == expected


def test_auto_precision_is_bf16_only_where_the_cpu_has_it() -> None:
    assert choose_openvino_precision("auto", WITH_BF16)[0] == "bf16"
    precision, reason = choose_openvino_precision("auto", NO_BF16)
    assert precision == "fp32"
    assert "no bfloat16" in reason and "FP32" in reason


@pytest.mark.parametrize("setting", ["bf16", "fp16"])
def test_unsupported_low_precision_falls_back_to_fp32_with_a_reason(setting: str) -> None:
    precision, reason = choose_openvino_precision(setting, NO_BF16)
    assert precision == "fp32"
    assert reason.startswith(f"{setting} requested") and "fp32" in reason


def test_supported_precisions_are_obeyed() -> None:
    assert choose_openvino_precision("bf16", WITH_BF16) == ("bf16", None)
    assert choose_openvino_precision("fp16", [*NO_BF16, "FP16"]) == ("fp16", None)
    assert choose_openvino_precision("fp32", WITH_BF16) == ("fp32", None)


def test_openvino_config_sets_precision_hint_threads_and_cache(tmp_path: Path) -> None:
    assert openvino_config(precision="fp32", hint="latency") == {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "CPU_RUNTIME_CACHE_CAPACITY": "0",
    }
    config = openvino_config(precision="bf16", hint="throughput", threads=3, cache_dir=tmp_path)
    assert config == {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": "bf16",
        "CPU_RUNTIME_CACHE_CAPACITY": "0",
        "INFERENCE_NUM_THREADS": "3",
        "CACHE_DIR": str(tmp_path),
    }


def test_engine_setting_is_validated(conv_model_path: Path) -> None:
    with pytest.raises(ValueError, match="engine"):
        _settings(conv_model_path, engine="tensorflow")


# --- The factory -----------------------------------------------------------------------------


def test_onnxruntime_is_obeyed(conv_model_path: Path) -> None:
    engine = create_engine(_settings(conv_model_path, engine="onnxruntime"))
    assert isinstance(engine, OnnxEngine)
    assert (engine.info.engine, engine.info.device, engine.info.fallback) == (
        "onnxruntime",
        "CPU",
        False,
    )


def test_auto_without_openvino_runs_onnxruntime_cpu(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "openvino_installed", lambda: False)
    monkeypatch.setattr(engine_module, "cuda_usable", lambda: False)
    info = create_engine(_settings(conv_model_path, engine="auto")).info
    assert (info.engine, info.provider, info.requested_engine) == (
        "onnxruntime",
        "CPUExecutionProvider",
        "auto",
    )
    assert not info.fallback


@needs_openvino
def test_auto_on_a_cpu_host_runs_openvino(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "cuda_usable", lambda: False)
    info = create_engine(_settings(conv_model_path, engine="auto", providers=["cuda", "cpu"])).info
    assert (info.engine, info.device, info.provider) == ("openvino", "CPU", PROVIDER)
    assert (info.requested_engine, info.fallback) == ("auto", False)


def test_auto_refuses_an_unknown_provider(conv_model_path: Path) -> None:
    with pytest.raises(engine_module.ModelLoadError, match="unknown execution provider"):
        create_engine(_settings(conv_model_path, engine="auto", providers=["GPUProvider"]))


def test_openvino_missing_falls_back_to_onnxruntime_with_the_reason(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    info = create_engine(_settings(conv_model_path, engine="openvino")).info
    assert (info.engine, info.requested_engine) == ("onnxruntime", "openvino")
    assert info.fallback
    assert "openvino is not installed" in info.fallback_reason


def test_openvino_compile_failure_falls_back(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(settings: Settings) -> None:
        raise EngineUnavailableError("cannot compile model: unsupported operation")

    monkeypatch.setattr(engine_module, "OpenVinoEngine", fail)
    info = create_engine(_settings(conv_model_path, engine="openvino")).info
    assert info.engine == "onnxruntime"
    assert "unsupported operation" in info.fallback_reason


def test_onnxruntime_runs_bf16_as_fp32_and_says_why(conv_model_path: Path) -> None:
    info = create_engine(_settings(conv_model_path, engine="onnxruntime", precision="bf16")).info
    assert (info.precision, info.precision_setting) == ("fp32", "bf16")
    assert "bfloat16" in info.precision_reason


# --- OpenVINO itself -------------------------------------------------------------------------


@needs_openvino
def test_openvino_reports_precision_and_config(conv_model_path: Path) -> None:
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    info = create_engine(_settings(conv_model_path, engine="openvino", intra_op_threads=1)).info
    assert info.precision == choose_openvino_precision("auto", capabilities)[0]
    assert info.precision_reason.startswith("auto:")
    assert info.engine_config["PERFORMANCE_HINT"] == "LATENCY"
    assert info.engine_config["INFERENCE_NUM_THREADS"] == "1"
    fp32 = create_engine(_settings(conv_model_path, engine="openvino", precision="fp32")).info
    assert (fp32.precision, fp32.engine_config["INFERENCE_PRECISION_HINT"]) == ("fp32", "f32")
    bf16 = create_engine(_settings(conv_model_path, engine="openvino", precision="bf16")).info
    if "BF16" in capabilities:
        assert (bf16.precision, bf16.precision_reason) == ("bf16", None)
    else:
        assert bf16.precision == "fp32"
        assert "bf16 requested" in bf16.precision_reason


@needs_openvino
def test_openvino_matches_onnxruntime(conv_model_path: Path) -> None:
    batch = np.stack([noise_image(9, 13, seed) for seed in range(2)]).astype(np.float32)
    engine = create_engine(_settings(conv_model_path, engine="openvino", precision="fp32"))
    expected = batch_runner(conv_model_path)(batch)
    np.testing.assert_allclose(engine.run(batch), expected, atol=1e-3)


@needs_openvino
def test_fixed_tiles_compile_the_tile_shape_and_still_run_other_shapes(
    conv_model_path: Path,
) -> None:
    engine = create_engine(
        _settings(conv_model_path, engine="openvino", tile_mode="fixed", tile_batch_size=2)
    )
    assert engine._static_shape == (2, 8, 8, 3)
    assert engine.run(np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 32, 32, 3)
    assert engine._dynamic_pool is None
    assert engine.run(np.zeros((1, 5, 6, 3), np.float32)).shape == (1, 5 * SCALE, 6 * SCALE, 3)


@needs_openvino
@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_concurrent_runs_are_safe(deep_model_path: Path, hint: str) -> None:
    engine = create_engine(_settings(deep_model_path, engine="openvino", openvino_hint=hint))
    batches = [noise_image(24, 20, seed).astype(np.float32)[np.newaxis] for seed in range(8)]
    expected = [engine.run(batch) for batch in batches]
    results: list[np.ndarray | None] = [None] * (len(batches) * 3)
    start = threading.Barrier(6)

    def worker(offset: int) -> None:
        start.wait()
        for index in range(offset, len(results), 6):
            results[index] = engine.run(batches[index % len(batches)])

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result, expected[index % len(batches)])
    assert 1 <= engine.infer_requests <= 6
