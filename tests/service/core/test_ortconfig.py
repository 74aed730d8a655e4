"""Provider plans, session options and precision choices: tested on any machine."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.core.engines import ortconfig
from service.core.engines.ortconfig import (
    GRAPH_OPTIMIZATION_LEVELS,
    choose_precision,
    cuda_provider_options,
    cudnn_tile_problem,
    declared_filters,
    fp16_path_for,
    resolve_providers,
    session_options,
)


def test_fp16_file_sits_beside_the_model() -> None:
    assert fp16_path_for("models/edsr_x4.onnx") == Path("models/edsr_x4_fp16.onnx")
    assert fp16_path_for(Path("/m/a.b.onnx")) == Path("/m/a.b_fp16.onnx")


def test_training_writes_where_the_service_looks() -> None:
    from training.precision import fp16_path_for as training_fp16_path

    assert training_fp16_path("models/edsr_x4.onnx") == fp16_path_for("models/edsr_x4.onnx")


@pytest.mark.parametrize(
    ("setting", "cuda", "available", "expected"),
    [
        ("auto", True, True, "fp16"),
        ("auto", True, False, "fp32"),
        ("auto", False, True, "fp32"),
        ("auto", False, False, "fp32"),
        ("fp32", True, True, "fp32"),
        ("fp16", False, True, "fp16"),
    ],
)
def test_choose_precision(setting: str, cuda: bool, available: bool, expected: str) -> None:
    assert choose_precision(setting, cuda_active=cuda, fp16_available=available) == expected


def test_session_options() -> None:
    options = session_options(
        intra_op_threads=2, inter_op_threads=1, graph_optimization="basic", cpu_mem_arena=False
    )
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_cpu_mem_arena is False
    defaults = session_options()
    assert defaults.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert defaults.enable_cpu_mem_arena is True


@pytest.mark.parametrize("level", sorted(GRAPH_OPTIMIZATION_LEVELS))
def test_every_optimisation_level_maps(level: str) -> None:
    assert session_options(graph_optimization=level).graph_optimization_level is not None


def test_unknown_optimisation_level_is_refused() -> None:
    with pytest.raises(ValueError, match="graph_optimization"):
        session_options(graph_optimization="max")


def test_cuda_provider_options() -> None:
    options = cuda_provider_options()
    assert options["prefer_nhwc"] == "1"
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["do_copy_in_default_stream"] == "1"
    assert all(isinstance(value, str) for value in options.values())
    other = cuda_provider_options(device_id=1, conv_algo_search="HEURISTIC", prefer_nhwc=False)
    assert (other["device_id"], other["cudnn_conv_algo_search"], other["prefer_nhwc"]) == (
        "1",
        "HEURISTIC",
        "0",
    )


@pytest.mark.parametrize(
    ("batch", "tile", "fits"),
    # The shapes measured on an H100 with the EDSR x4 baseline (64 filters).
    [(1, 1448, True), (1, 1449, False), (7, 512, True), (8, 512, False), (3, 836, True)],
)
def test_cudnn_tile_limit_matches_the_measured_shapes(batch: int, tile: int, fits: bool) -> None:
    assert (cudnn_tile_problem(batch, tile, 4, 64) is None) is fits


def test_cudnn_tile_problem_names_the_largest_batch_that_fits() -> None:
    problem = cudnn_tile_problem(8, 512, 4, 64)
    assert problem is not None
    assert "2,147,483,648 elements" in problem
    assert "at most 7" in problem
    assert "tiles of at most 1448 pixels" in (cudnn_tile_problem(1, 2048, 4, 64) or "")


def test_declared_filters_fall_back_to_the_edsr_baseline() -> None:
    assert declared_filters({"filters": "256"}) == 256
    assert declared_filters({}) == declared_filters({"filters": "many"}) == 64


def test_tensorrt_is_skipped_when_its_library_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortconfig, "tensorrt_libraries_loadable", lambda: False)
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    )
    plan = resolve_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert plan.attempted == ("CPUExecutionProvider",)
    assert "TensorRT library" in plan.skipped["TensorrtExecutionProvider"]


def test_tensorrt_is_tried_when_its_library_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortconfig, "tensorrt_libraries_loadable", lambda: True)
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
