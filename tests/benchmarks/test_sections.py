"""A super-tiny run of every harness section on the test suite's tiny model, so none can rot.

Nothing here checks a timing: only that each section runs end to end and reports what it
should (the HTTP section really starts uvicorn in a subprocess).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as benchmarks_main
from benchmarks import (
    encode_section,
    estimate_section,
    gpu_section,
    http_section,
    memory_section,
    model_section,
    tiling_section,
    tuning_section,
)
from benchmarks.__main__ import main
from benchmarks.context import BenchContext
from benchmarks.presets import QUICK, SECTIONS, SMOKE


def test_model_section_compares_engines(ctx: BenchContext) -> None:
    result = model_section.run(ctx)
    engines = {row["engine"]: row for row in result["engines"]}
    assert "onnxruntime" in engines
    assert result["skipped"]["keras_predict"] == "no --checkpoint given"
    if "opencv_dnn" in engines:  # OpenCV reads the same ONNX file and must agree with it
        assert engines["opencv_dnn"]["max_abs_diff_vs_onnxruntime"] < 0.01
        assert result["speedup_vs_opencv_dnn"] > 0
    assert result["gflop_per_call"] > 0 and result["sgemm_gflop_per_s"] > 0


def test_tiling_section_matches_whole_image(ctx: BenchContext) -> None:
    result = tiling_section.run(ctx)
    assert result["service_mode"] == "fit"
    for mode in ("fit", "fixed"):
        # The tiny model's receptive field fits in the overlap: tiling is exact.
        assert result["modes"][mode]["max_abs_diff_vs_whole"] == 0
        assert result["modes"][mode]["fraction_differing_vs_whole"] == 0
        assert result["modes"][mode]["psnr_vs_whole_db"] is None
        assert result["modes"][mode]["pixel_work"] >= 1.0
    assert result["tiled_over_whole"] > 0


def test_tuning_section_covers_every_variant(ctx: BenchContext) -> None:
    result = tuning_section.run(ctx)
    assert len(result["session_options"]) == len(tuning_section.SESSION_VARIANTS)
    expected = [tile for _, tiles in SMOKE.tile_sweep for tile in tiles]
    assert [row["tile_size"] for row in result["tile_sizes"]] == expected
    assert result["concurrency"]["two_over_one"] > 0


def test_encode_section_round_trips_lossless_encoders(ctx: BenchContext) -> None:
    result = encode_section.run(ctx)
    rows = {row["encoder"]: row for row in result["encoders"]}
    assert any(name.startswith("strips-png") for name in rows)
    for row in rows.values():
        assert row["bytes"] > 0
        assert row["lossless_round_trip"] in (True, None), row["encoder"]


def test_estimate_section_sets_the_services_estimate_against_real_requests(
    ctx: BenchContext,
) -> None:
    result = estimate_section.run(ctx)
    assert result["seconds_per_megapixel"] > 0
    assert [row["input"] for row in result["requests"]] == [f"{s}x{s}" for s in SMOKE.http_sizes]
    for row in result["requests"]:
        # The tiny model's times round to 0.0 s at millisecond precision.
        assert row["estimate_s"] >= 0 and 0 <= row["model_s"] <= row["total_s"]


def test_http_section_drives_the_real_service(ctx: BenchContext) -> None:
    result = http_section.run(ctx)
    cells = [cell for cell in result["cells"] if "skipped" not in cell]
    assert len(cells) == len(SMOKE.http_sizes) * len(SMOKE.http_concurrency)
    for cell in cells:
        assert set(cell["statuses"]) <= {"200", "503"}
        assert cell["statuses"].get("200", 0) >= 1
        assert set(cell["server_split_ms"]) == {"decode", "model", "encode"}
        assert cell["p50_over_bare"] > 0


def test_gpu_section_code_paths_on_the_cpu(ctx: BenchContext) -> None:
    pytest.importorskip("onnxconverter_common")
    from training.precision import convert_to_fp16

    convert_to_fp16(ctx.model_path)
    result = gpu_section.run(ctx, provider="CPUExecutionProvider")
    assert result["cpu_smoke"] is True
    assert all("output_mp_per_s" in row for row in result["variants"])
    assert [(row["batch"], row["path"]) for row in result["batched"]] == [
        (size, path) for size in (1, 2, 4, 8) for path in ("service", "on device")
    ]
    assert all("output_mp_per_s" in row for row in result["batched"])
    cells = [cell for cell in result["http"]["cells"] if "skipped" not in cell]
    assert cells and all(cell["statuses"].get("200", 0) >= 1 for cell in cells)


def test_batch_sizes_past_cudnns_limit_are_skipped_without_running(ctx: BenchContext) -> None:
    # The tiny model has few filters, so a batch this large is what reaches 2**31 elements; it
    # must be refused before a single tile is made.
    rows = gpu_section.batched(ctx, "CPUExecutionProvider", 512, (10_000,), 1, cudnn_limit=True)
    assert [row["path"] for row in rows] == ["service", "on device"]
    assert all("2**31" in row["skipped"] and "output_mp_per_s" not in row for row in rows)


def test_memory_section_measures_every_case_in_its_own_process(ctx: BenchContext) -> None:
    result = memory_section.run(ctx)
    assert len(result["cases"]) == len(memory_section.CASES)
    for case in result["cases"]:
        assert case["input"].startswith("32x32")
        assert case["growth_mb"] >= 0


def test_command_line_writes_results(tiny_model: Path, tmp_path: Path, capsys) -> None:
    status = main(
        [
            "--model",
            str(tiny_model),
            "--preset",
            "smoke",
            "--sections",
            "tiling,encode",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0
    results = json.loads((tmp_path / "cpu-smoke.json").read_text())
    assert results["machine"]["cpus_available"] >= 1
    assert "onnxruntime-gpu" in results["machine"]["versions"] or "onnxruntime" in str(results)
    assert {target["name"] for target in results["targets"]}
    assert "| target |" in capsys.readouterr().out


def test_quick_runs_the_first_look_sections_only(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `--quick` costs is the sections it runs (about two minutes on 2 cores, measured in
    # docs/benchmarks.md): tiling, tuning, memory and start-up are the full run's.
    ran: list[tuple[str, str]] = []

    def sections() -> dict[str, Any]:
        def recorder(name: str) -> Any:
            return lambda ctx: ran.append((name, ctx.preset.name)) or {}

        return {name: recorder(name) for name in (*SECTIONS, "ray")}

    monkeypatch.setattr(benchmarks_main, "_sections", sections)
    args = ["--model", str(tiny_model), "--out", str(tmp_path), "--quiet"]
    assert main([*args, "--quick"]) == 0
    assert ran == [(name, "quick") for name in ("model", "encode", "http", "gpu")]
    assert not QUICK.model_parallel, "the parallel-call study is the full run's"
    ran.clear()
    assert main([*args, "--quick", "--sections", "tiling"]) == 0
    assert ran == [("tiling", "quick")], "--sections still chooses"
    ran.clear()
    assert main(args) == 0
    assert [name for name, _ in ran] == list(SECTIONS)


def test_command_line_refuses_a_missing_model(tmp_path: Path) -> None:
    assert main(["--model", str(tmp_path / "none.onnx")]) == 1
