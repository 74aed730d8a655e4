"""The harness's pure helpers: statistics, FLOP counting, server plumbing, targets, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.http_section import estimated_seconds, plan_cell, requests_for, summarise
from benchmarks.measure import (
    Timing,
    conv_flops,
    megapixels_per_second,
    percentile,
    ratio,
    time_interleaved,
)
from benchmarks.report import plot_latency, summary_markdown
from benchmarks.server import Reply, parse_server_timing, settings_environment, status_counts
from benchmarks.targets import evaluate
from benchmarks.tiling_section import pixel_work
from service.config import Settings
from tests.service.helpers import build_model


def test_percentile_and_timing_summary() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isnan(percentile([], 50))
    timing = Timing.of([0.3, 0.1, 0.2])
    assert (timing.samples, timing.median, timing.minimum) == (3, 0.2, 0.1)
    assert timing.as_dict()["median"] == 200.0
    with pytest.raises(ValueError):
        Timing.of([])


def test_rates_and_ratios() -> None:
    assert megapixels_per_second(2_000_000, 0.5) == 4.0
    assert megapixels_per_second(10, 0) == 0.0
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0) is None


def test_interleaved_timing_takes_turns_and_rotates_who_goes_first() -> None:
    order: list[str] = []

    def call(name: str):
        return lambda: order.append(name) or name

    timings = time_interleaved({"a": call("a"), "b": call("b"), "c": call("c")}, repeat=3)

    # One warm-up each, then three rounds, each starting one call later.
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert list(timings) == ["a", "b", "c"]
    assert all(timing.samples == 3 and result == name for name, (timing, result) in timings.items())


def test_conv_flops_counts_every_convolution(tmp_path: Path) -> None:
    # [conv 3->8 (dilated)] + conv 8->48 at the input resolution, both 3x3.
    path = build_model(tmp_path / "m.onnx", hidden_layers=1)
    flops = conv_flops(path, 5, 7)
    pixels = 5 * 7
    assert flops == 2 * pixels * (8 * 3 * 9 + 48 * 8 * 9)


def test_server_timing_is_parsed() -> None:
    header = "decode;dur=1.5, model;dur=20, encode;desc=x;dur=3.25, broken;dur=x"
    assert parse_server_timing(header) == {"decode": 1.5, "model": 20.0, "encode": 3.25}
    assert parse_server_timing(None) == {}


def test_settings_environment_reproduces_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        model_path=Path("/m.onnx"), providers=["CPUExecutionProvider"], cpu_mem_arena=False
    )
    for key, value in settings_environment(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_cell_sizes_and_estimates() -> None:
    settings = Settings(max_concurrency=1, max_queue=8)
    assert [requests_for(c, 2) for c in (1, 4, 16)] == [2, 8, 16]
    # 16 requests, 9 admitted (1 running + 8 queued), one at a time.
    assert estimated_seconds(16, 16, 2.0, settings) == 18.0
    assert plan_cell(1, 2.0, settings, minimum=3, budget_s=60) == (3, 6.0)
    # Too long for the budget: a sequential cell still sends one request, others are skipped.
    assert plan_cell(1, 30.0, settings, minimum=3, budget_s=60) == (1, 30.0)
    assert plan_cell(4, 30.0, settings, minimum=3, budget_s=60) == (8, 240.0)


def test_cell_summary() -> None:
    replies = [
        Reply(200, 0.1, 4, {"decode": 1.0, "model": 8.0, "encode": 1.0}),
        Reply(200, 0.3, 4, {"decode": 3.0, "model": 8.0, "encode": 3.0}),
        Reply(503, 0.01),
    ]
    cell = summarise(replies, wall_s=0.4)
    assert cell["statuses"] == {"200": 2, "503": 1}
    assert cell["p50_ms"] == 200.0
    assert cell["output_mp_per_s"] == pytest.approx(8 / 0.4 / 1e6, abs=1e-3)
    assert cell["server_split_ms"] == {"decode": 2.0, "model": 8.0, "encode": 2.0}
    assert status_counts(replies) == {"200": 2, "503": 1}


def test_pixel_work_of_fixed_and_fitted_tiles() -> None:
    # 260 pixels with 256 tiles: fixed runs two full tiles per axis, fit two of 146.
    assert pixel_work(260, 260, 256, 16, fit=False) == pytest.approx((512 / 260) ** 2)
    assert pixel_work(260, 260, 256, 16, fit=True) == pytest.approx((292 / 260) ** 2)
    assert pixel_work(100, 100, 256, 16, fit=True) == 1.0


def _http(c1: float, c4: float, statuses: dict[str, int]) -> dict:
    return {
        "bare_model_plus_encode": {"256": {"total_ms": 100.0}},
        "cells": [
            {"input": 256, "concurrency": 1, "p50_ms": 110.0, "p50_over_bare": 1.1,
             "output_mp_per_s": c1, "statuses": {"200": 2}},
            {"input": 256, "concurrency": 4, "p50_ms": 400.0, "p50_over_bare": 4.0,
             "output_mp_per_s": c4, "statuses": statuses},
        ],
    }  # fmt: skip


def test_targets_pass_fail_and_not_measured() -> None:
    results = {
        "model": {"speedup_vs_keras_predict": 1.5, "speedup_vs_opencv_dnn": 1.1, "skipped": {}},
        "tiling": {"tiled_over_whole": 1.05, "input": "512x512", "service_mode": "fit"},
        "http": _http(10.0, 9.5, {"200": 6, "503": 2}),
    }
    verdicts = {target.name: target.passed for target in evaluate(results)}
    assert verdicts["CPU: onnxruntime speed / Keras predict"] is True
    assert verdicts["CPU: onnxruntime speed / OpenCV DNN"] is False
    assert verdicts["CPU: tiled time / whole-image time"] is True
    assert verdicts["CPU: HTTP p50 / (bare model + encode), 256² input"] is True
    assert verdicts["CPU: throughput at concurrency 4 / sequential"] is True
    gpu = [name for name in verdicts if name.startswith("GPU")]
    assert gpu and all(verdicts[name] is None for name in gpu)


def test_other_statuses_fail_the_throughput_target() -> None:
    results = {"http": _http(10.0, 10.0, {"200": 6, "500": 2})}
    target = next(t for t in evaluate(results) if "concurrency 4" in t.name)
    assert target.passed is False and "500" in target.note


def test_gpu_targets_read_the_gpu_section() -> None:
    http = _http(1.0, 1.0, {"200": 8})
    http["cells"][0]["server_split_ms"] = {"decode": 2.0, "model": 5.0, "encode": 3.0}
    results = {
        "gpu": {
            "provider": "CUDAExecutionProvider",
            "cpu_smoke": False,
            "batched": [{"tile": 512, "model": "m_fp16.onnx", "output_mp_per_s": 900.0}],
            "fp16_quality": {"delta_db": -0.01},
            "http": http,
        }
    }
    verdicts = {t.name: (t.passed, t.measured) for t in evaluate(results)}
    assert verdicts["GPU: fp16 batched model path, output MP/s on 512² tiles"] == (True, 900.0)
    assert verdicts["GPU: Set5 PSNR difference, fp16 against fp32 (dB, absolute)"] == (True, 0.01)
    assert verdicts["GPU: encode share of end-to-end server time"] == (True, 0.3)


def test_the_fp16_target_is_not_answered_by_the_fp32_fallback() -> None:
    results = {
        "gpu": {
            "provider": "CUDAExecutionProvider",
            "cpu_smoke": False,
            "batched": [{"tile": 512, "model": "m.onnx", "output_mp_per_s": 900.0}],
        }
    }
    target = next(t for t in evaluate(results) if "fp16 batched" in t.name)
    assert target.measured is None and "fp32 model" in target.note


def test_the_batched_target_reads_only_measured_service_calls() -> None:
    fp16 = {"tile": 512, "model": "m_fp16.onnx"}
    results = {
        "gpu": {
            "provider": "CUDAExecutionProvider",
            "cpu_smoke": False,
            "batched": [
                {**fp16, "batch": 1, "path": "service", "output_mp_per_s": 330.0},
                {**fp16, "batch": 1, "path": "on device", "output_mp_per_s": 500.0},
                {**fp16, "batch": 8, "path": "service", "skipped": "too large for cuDNN"},
            ],
        }
    }
    target = next(t for t in evaluate(results) if "fp16 batched" in t.name)
    assert (target.measured, target.passed) == (330.0, False)


def test_batched_rows_from_before_the_path_field_still_count() -> None:
    results = {
        "gpu": {
            "provider": "CUDAExecutionProvider",
            "cpu_smoke": False,
            "batched": [
                {"tile": 512, "batch": 1, "model": "m_fp16.onnx", "output_mp_per_s": 182.3},
                {"tile": 512, "batch": 8, "model": "m_fp16.onnx", "error": "CUDNN failure"},
            ],
        }
    }
    target = next(t for t in evaluate(results) if "fp16 batched" in t.name)
    assert target.measured == 182.3


def test_summary_and_plot(tmp_path: Path) -> None:
    results = {
        "command": "python -m benchmarks --quick",
        "preset": "quick",
        "machine": {"cpu": "test cpu", "cpus_available": 2},
        "http": _http(1.0, 1.0, {"200": 8}),
    }
    text = summary_markdown(results, evaluate(results))
    assert "| CPU: throughput at concurrency 4 / sequential | 1 | ≥ 0.9 | PASS |" in text
    assert "not measured" in text
    plot = tmp_path / "latency.png"
    assert plot_latency(results["http"], plot, "test")
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert not plot_latency({"cells": []}, tmp_path / "none.png", "empty")
    json.dumps(results)
