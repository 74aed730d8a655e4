"""Engine choices beyond providers: the fp32/fp16 file, session options, cuDNN's tile limit.

The fp16 selection logic is tested with a copy of the tiny fp32 model standing in for the fp16
export: which file gets loaded is what matters here, not its arithmetic.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.core.engines import OnnxEngine, onnxruntime_engine, ortconfig
from service.core.engines import base as engine_base
from service.core.engines.ortconfig import cuda_usable
from service.exceptions import ModelLoadError
from tests.service.helpers import CPU_ONLY, batch_runner, build_model, noise_image


@pytest.fixture
def model_pair(conv_model_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An fp32 model and a stand-in fp16 export beside it."""
    fp32 = shutil.copy(conv_model_path, tmp_path / "edsr_x4.onnx")
    fp16 = shutil.copy(conv_model_path, tmp_path / "edsr_x4_fp16.onnx")
    return Path(fp32), Path(fp16)


def _engine(path: Path, **overrides: object) -> OnnxEngine:
    values = {"providers": CPU_ONLY, "tile_size": 8, "tile_overlap": 2}
    return OnnxEngine(Settings(model_path=path, **{**values, **overrides}))


def test_auto_runs_fp32_on_the_cpu_even_with_an_fp16_export(model_pair) -> None:
    fp32, _ = model_pair
    info = _engine(fp32, precision="auto").info
    assert (info.precision, info.precision_setting, info.path) == ("fp32", "auto", fp32)


def test_explicit_fp16_loads_the_fp16_export(model_pair) -> None:
    fp32, fp16 = model_pair
    info = _engine(fp32, precision="fp16").info
    assert (info.precision, info.path) == ("fp16", fp16)


def test_explicit_fp16_without_the_export_fails_naming_it(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"conv_fp16\.onnx.*--fp16"):
        _engine(conv_model_path, precision="fp16")


def test_fp32_is_obeyed(model_pair) -> None:
    fp32, _ = model_pair
    assert _engine(fp32, precision="fp32").info.path == fp32


def test_unknown_precision_never_reaches_the_engine(conv_model_path: Path) -> None:
    # Validated once, by the settings the engine is built from.
    with pytest.raises(ValidationError, match="precision"):
        _engine(conv_model_path, precision="int8")


@pytest.mark.skipif(cuda_usable(), reason="this host has a CUDA driver")
def test_auto_falls_back_to_fp32_when_cuda_does_not_really_run(
    model_pair, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to fall back from")
    fp32, _ = model_pair
    with caplog.at_level(logging.WARNING, logger="service.core.engines"):
        info = _engine(fp32, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]).info
    assert info.provider == "CPUExecutionProvider"
    assert (info.precision, info.path) == ("fp32", fp32)
    assert any("fp32 model" in record.getMessage() for record in caplog.records)


def test_session_options_reach_the_session(conv_model_path: Path) -> None:
    engine = _engine(
        conv_model_path, graph_optimization="disable", cpu_mem_arena=False, intra_op_threads=1
    )
    batch = noise_image(8, 8)[np.newaxis].astype(np.float32)
    assert np.allclose(engine.run(batch), batch_runner(conv_model_path)(batch), atol=1e-4)


def test_an_optimisation_level_this_onnxruntime_lacks_is_a_load_error(
    conv_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `layout` exists only in recent onnxruntime releases: older ones refuse it at load time.
    levels = {k: v for k, v in ortconfig.GRAPH_OPTIMIZATION_LEVELS.items() if k != "layout"}
    monkeypatch.setattr(ortconfig, "GRAPH_OPTIMIZATION_LEVELS", levels)
    with pytest.raises(ModelLoadError, match="graph_optimization"):
        _engine(conv_model_path, graph_optimization="layout")


def _pretend_cpu_is_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU provider has no cuDNN limit, so the check is reached by treating it as a GPU.
    for module in (engine_base, onnxruntime_engine):
        monkeypatch.setattr(module, "GPU_PROVIDERS", frozenset({"CPUExecutionProvider"}))


def test_tiles_too_large_for_cudnn_stop_the_start_on_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model that declares the EDSR baseline's 64 filters.
    model = build_model(tmp_path / "edsr.onnx", metadata={"scale": "4", "filters": "64"})
    _pretend_cpu_is_a_gpu(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"at most 7.*UPSCALER_TILE_BATCH_SIZE"):
        _engine(model, tile_size=512, tile_batch_size=8)
    assert _engine(model, tile_size=512, tile_batch_size=7).info.batch_size == 7


def test_a_model_without_scale_metadata_is_probed_small_before_the_tile_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probing with the configured tile shape would hand cuDNN the very shape the check refuses.
    model = build_model(tmp_path / "unlabelled.onnx", metadata={})
    _pretend_cpu_is_a_gpu(monkeypatch)
    shapes: list[tuple[int, ...]] = []
    real_run = OnnxEngine.run

    def recording_run(self: OnnxEngine, batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return real_run(self, batch)

    monkeypatch.setattr(OnnxEngine, "run", recording_run)
    with pytest.raises(ModelLoadError, match="at most 7"):
        _engine(model, tile_size=512, tile_batch_size=8)
    assert shapes == [(1, 16, 16, 3)]
