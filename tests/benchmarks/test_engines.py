"""The engine dimension of the harness: model-section engines and parallel calls, the HTTP
section per engine, start-up times, the quality command and issue 18's targets (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from benchmarks import http_section, model_section, quality, startup_section
from benchmarks.__main__ import main
from benchmarks.context import BenchContext
from benchmarks.targets import evaluate
from service.core.engines.ortconfig import openvino_installed
from tests.service.helpers import noise_image

ENGINES = ["onnxruntime"] + (["openvino"] if openvino_installed() else [])


def test_model_section_has_every_engine_and_parallel_calls(ctx: BenchContext) -> None:
    result = model_section.run(ctx)
    engines = {row["engine"]: row for row in result["engines"]}
    if openvino_installed():
        assert engines["openvino_fp32"]["max_abs_diff_vs_onnxruntime"] < 0.01
        assert engines["openvino_fp32"]["engine_config"]["INFERENCE_PRECISION_HINT"] == "f32"
        # bf16 is measured where the CPU has it, else skipped with the reason.
        assert "openvino_bf16" in engines or "bf16" in result["skipped"]["openvino_bf16"]
        hints = {name.rsplit("_", 1)[1] for name in result["parallel"] if "openvino" in name}
        assert hints == {"latency", "throughput"}
    assert result["parallel"]["onnxruntime"]["speedup"] > 0
    assert result["service_cpu_speedup_vs_onnxruntime"] > 0


def test_parallel_throughput_counts_calls() -> None:
    calls = []
    rows = model_section.parallel_throughput({"f": lambda: calls.append(1)}, repeats=2)
    assert len(calls) == 1 + 2 + 2 * (1 + 2)
    assert set(rows["f"]) == {"one_call_ms", "2_parallel_ms", "speedup"}


def test_http_section_measures_every_engine(ctx: BenchContext) -> None:
    result = http_section.run(ctx)
    assert set(result["engines"]) == set(ENGINES)
    for name in ENGINES:
        cells = [c for c in result["engines"][name]["cells"] if "skipped" not in c]
        assert cells and all(c["statuses"] == {"200": c["requests"]} for c in cells)
    assert result["cells"] == result["engines"]["onnxruntime"]["cells"]


def test_startup_section_times_every_engine(ctx: BenchContext) -> None:
    result = startup_section.run(ctx)
    assert set(result["engines"]) == set(ENGINES)
    assert all(row["median_s"] > 0 for row in result["engines"].values())


def test_quality_command_scores_engines(tiny_model: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for seed in range(2):
        Image.fromarray(noise_image(34, 27, seed)).save(folder / f"{seed}.png")
    out = tmp_path / "quality.json"
    code = quality.main(["--data", str(folder), "--model", str(tiny_model), "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["sets"][0]["engines"]
    assert rows["onnxruntime_fp32"]["delta_vs_onnxruntime_fp32_db"] == 0
    if openvino_installed():
        assert abs(rows["openvino_fp32"]["delta_vs_onnxruntime_fp32_db"]) < 0.05
    assert "| set |" in capsys.readouterr().out
    assert main(["quality", "--data", str(folder), "--model", str(tiny_model), "--quiet"]) == 0


def test_engine_targets_read_the_openvino_figures() -> None:
    cells = [
        {
            "input": 256,
            "concurrency": 1,
            "p50_over_bare": 1.05,
            "output_mp_per_s": 1.0,
            "statuses": {"200": 2},
        },
        {"input": 256, "concurrency": 4, "output_mp_per_s": 0.95, "statuses": {"200": 8}},
    ]
    results = {
        "model": {
            "service_cpu_engine": "openvino_fp32",
            "service_cpu_speedup_vs_keras_predict": 1.5,
        },
        "http": {"engines": {"openvino": {"cells": cells}}},
        "startup": {"openvino_minus_onnxruntime_s": 0.7},
    }
    verdicts = {t.name: t.passed for t in evaluate(results)}
    assert verdicts["CPU engine (openvino_fp32) speed / Keras predict"] is True
    assert verdicts["OpenVINO: HTTP p50 / (bare model + encode), 256² input"] is True
    assert verdicts["OpenVINO: throughput at concurrency 4 / sequential"] is True
    assert verdicts["OpenVINO start-up to ready minus onnxruntime's (s)"] is True
