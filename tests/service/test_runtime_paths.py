"""Runtime choices beyond providers: the fp32/fp16 file, session options and I/O binding.

The fp16 selection logic is tested with a copy of the tiny fp32 model standing in for the fp16
export: which file gets loaded is what matters here, not its arithmetic. The I/O-binding code
path runs on the CPU provider with CPU buffers, the same code the CUDA path runs.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from service.exceptions import ModelLoadError
from service.iobinding import BoundRunner
from service.ortconfig import cuda_usable
from service.runtime import UpscalerRuntime
from tests.service.helpers import CPU_ONLY, SCALE, batch_runner, build_model, noise_image


@pytest.fixture
def model_pair(conv_model_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An fp32 model and a stand-in fp16 export beside it."""
    fp32 = shutil.copy(conv_model_path, tmp_path / "edsr_x4.onnx")
    fp16 = shutil.copy(conv_model_path, tmp_path / "edsr_x4_fp16.onnx")
    return Path(fp32), Path(fp16)


def _runtime(path: Path, **options: object) -> UpscalerRuntime:
    return UpscalerRuntime(path, **{"providers": CPU_ONLY, "tile_size": 8, **options})


def test_auto_runs_fp32_on_the_cpu_even_with_an_fp16_export(model_pair) -> None:
    fp32, _ = model_pair
    runtime = _runtime(fp32, precision="auto")
    assert (runtime.precision, runtime.precision_setting, runtime.model_path) == (
        "fp32",
        "auto",
        fp32,
    )


def test_explicit_fp16_loads_the_fp16_export(model_pair) -> None:
    fp32, fp16 = model_pair
    runtime = _runtime(fp32, precision="fp16")
    assert (runtime.precision, runtime.model_path) == ("fp16", fp16)


def test_explicit_fp16_without_the_export_fails_naming_it(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"conv_fp16\.onnx.*--fp16"):
        _runtime(conv_model_path, precision="fp16")


def test_fp32_is_obeyed(model_pair) -> None:
    fp32, _ = model_pair
    assert _runtime(fp32, precision="fp32").model_path == fp32


def test_unknown_precision_is_a_load_error(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="precision"):
        _runtime(conv_model_path, precision="int8")


@pytest.mark.skipif(cuda_usable(), reason="this host has a CUDA driver")
def test_auto_falls_back_to_fp32_when_cuda_does_not_really_run(
    model_pair, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to fall back from")
    fp32, _ = model_pair
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        runtime = _runtime(fp32, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.primary_provider == "CPUExecutionProvider"
    assert (runtime.precision, runtime.model_path) == ("fp32", fp32)
    assert any("fp32 model" in record.getMessage() for record in caplog.records)


def test_session_options_reach_the_session(conv_model_path: Path) -> None:
    runtime = _runtime(
        conv_model_path, graph_optimization="disable", cpu_mem_arena=False, intra_op_threads=1
    )
    batch = noise_image(8, 8)[np.newaxis].astype(np.float32)
    assert np.allclose(runtime.run(batch), batch_runner(conv_model_path)(batch), atol=1e-4)


def test_bad_graph_optimization_is_a_load_error(conv_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="graph_optimization"):
        _runtime(conv_model_path, graph_optimization="max")


def test_io_binding_is_off_by_default(conv_model_path: Path) -> None:
    assert not _runtime(conv_model_path).io_binding


def test_tiles_too_large_for_cudnn_stop_the_start_on_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model that declares the EDSR baseline's 64 filters; the CPU provider has no such limit,
    # so the check is reached by pretending to run on CUDA.
    model = build_model(tmp_path / "edsr.onnx", metadata={"scale": "4", "filters": "64"})
    monkeypatch.setattr(
        UpscalerRuntime, "primary_provider", property(lambda _: "CUDAExecutionProvider")
    )
    with pytest.raises(ModelLoadError, match=r"at most 7.*UPSCALER_TILE_BATCH_SIZE"):
        _runtime(model, tile_size=512, batch_size=8)
    assert _runtime(model, tile_size=512, batch_size=7).batch_size == 7


def test_a_model_without_scale_metadata_is_probed_small_before_the_tile_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probing with the configured tile shape would hand cuDNN the very shape the check refuses.
    model = build_model(tmp_path / "unlabelled.onnx", metadata={})
    monkeypatch.setattr(
        UpscalerRuntime, "primary_provider", property(lambda _: "CUDAExecutionProvider")
    )
    shapes: list[tuple[int, ...]] = []
    real_run = UpscalerRuntime.run

    def recording_run(self: UpscalerRuntime, batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return real_run(self, batch)

    monkeypatch.setattr(UpscalerRuntime, "run", recording_run)
    with pytest.raises(ModelLoadError, match="at most 7"):
        _runtime(model, tile_size=512, batch_size=8)
    assert shapes == [(1, 16, 16, 3)]


def test_bound_path_gives_the_same_results(conv_model_path: Path) -> None:
    plain = _runtime(conv_model_path, batch_size=2)
    bound = _runtime(conv_model_path, batch_size=2, io_binding=True)
    assert bound.io_binding
    first = np.stack([noise_image(8, 8, seed=1), noise_image(8, 8, seed=2)]).astype(np.float32)
    second = first[::-1].copy()
    out_first, out_second = bound.run(first), bound.run(second)
    # Each call returns its own array: the second run must not overwrite the first result.
    assert np.allclose(out_first, plain.run(first), atol=1e-4)
    assert np.allclose(out_second, plain.run(second), atol=1e-4)
    # Other shapes bypass the bound buffers.
    odd = noise_image(5, 7)[np.newaxis].astype(np.float32)
    assert bound.run(odd).shape == (1, 5 * SCALE, 7 * SCALE, 3)
    assert bound.warm_up() >= 0


def test_bound_runner_keeps_threads_apart(conv_model_path: Path) -> None:
    runtime = _runtime(conv_model_path)
    runner = BoundRunner(
        runtime._session,
        input_name="lr",
        output_name="sr",
        input_shape=(1, 8, 8, 3),
        output_shape=(1, 8 * SCALE, 8 * SCALE, 3),
        device="cpu",
    )
    reference = batch_runner(conv_model_path)
    failures: list[str] = []

    def work(seed: int) -> None:
        batch = noise_image(8, 8, seed=seed)[np.newaxis].astype(np.float32)
        for _ in range(20):
            if not np.allclose(runner.run(batch), reference(batch), atol=1e-4):
                failures.append(f"thread {seed}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with pytest.raises(ValueError, match="takes shape"):
        runner.run(np.zeros((2, 8, 8, 3), np.float32))
