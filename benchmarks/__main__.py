"""Command line: `python -m benchmarks [--quick] [--model PATH] [--checkpoint PATH] ...`.

Runs the sections in order (model, tiling, tuning, encode, memory, http, startup, estimate,
gpu), writes `<out>/<name>.json` with every figure, the machine and the versions,
`<out>/<name>_latency.png`, and prints the targets table. `--quick` runs the sections a first
look needs (model, encode, http, gpu) in about two minutes on 2 cores; the full run (the
default) runs them all.

`python -m benchmarks quality --data DIR ...` scores every engine/precision's PSNR against
onnxruntime fp32 instead (`benchmarks.quality`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.presets import QUICK, SECTIONS

#: Sections run only when `--sections` names them: `ray` needs the `ray` extra and starts a
#: local Ray instance (`benchmarks.ray_section`).
OPTIONAL_SECTIONS = ("ray",)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark the EDSR upscaler and its service."
    )
    parser.add_argument(
        "--model", type=Path, default=Path("models/edsr_x4.onnx"), help="fp32 ONNX model"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=".keras checkpoint of the same weights, for the Keras predict baseline",
    )
    parser.add_argument(
        "--quick", action="store_true", help="what a first look needs, about 2 minutes"
    )
    parser.add_argument(
        "--preset",
        choices=("quick", "full", "smoke"),
        default=None,
        help="measurement preset (default: full, or quick with --quick; smoke is for tests)",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of: "
        + ",".join(SECTIONS)
        + " (default: the preset's; --quick runs "
        + ",".join(QUICK.sections)
        + "); optional: "
        + ",".join(OPTIONAL_SECTIONS),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/benchmarks"), help="folder for JSON and plot"
    )
    parser.add_argument(
        "--name", default=None, help="file name stem (default: cpu-quick / cpu-full / gpu-...)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    unknown = set((args.sections or "").split(",")) - {""} - set(SECTIONS) - set(OPTIONAL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    return args


def _sections() -> dict[str, Callable[[Any], dict[str, Any]]]:
    from benchmarks import (
        encode_section,
        estimate_section,
        gpu_section,
        http_section,
        memory_section,
        model_section,
        ray_section,
        startup_section,
        tiling_section,
        tuning_section,
    )

    return {
        "model": model_section.run,
        "tiling": tiling_section.run,
        "tuning": tuning_section.run,
        "encode": encode_section.run,
        "memory": memory_section.run,
        "http": http_section.run,
        "startup": startup_section.run,
        "estimate": estimate_section.run,
        "gpu": gpu_section.run,
        "ray": ray_section.run,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the harness; returns the exit status (1 if the model is missing)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["quality"]:
        from benchmarks import quality

        return quality.main(arguments[1:])
    args = parse_args(argv)
    if not args.model.is_file():
        print(f"model not found: {args.model} (export one with python -m training export)")
        return 1
    from benchmarks import report
    from benchmarks.context import CPU_ONLY, BenchContext, service_settings
    from benchmarks.presets import PRESETS
    from benchmarks.targets import evaluate

    preset = PRESETS[args.preset or ("quick" if args.quick else "full")]
    ctx = BenchContext(
        model_path=args.model,
        preset=preset,
        settings=service_settings(args.model, CPU_ONLY),
        checkpoint=args.checkpoint,
        verbose=not args.quiet,
    )
    wanted = args.sections.split(",") if args.sections else list(preset.sections)
    name = args.name or ("gpu" if wanted == ["gpu"] else "cpu") + f"-{preset.name}"
    results: dict[str, Any] = {
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "preset": preset.name,
        "machine": report.machine(),
        "settings": ctx.settings.model_dump(mode="json"),
        "inputs": ctx.image_source(),
        "environment": {k: v for k, v in os.environ.items() if k.startswith("UPSCALER_")},
    }
    results["model_file"] = {"path": str(args.model), "metadata": dict(ctx.engine.info.metadata)}
    json_path = args.out / f"{name}.json"
    for section, run in _sections().items():
        if section in wanted:
            ctx.log(f"section {section}")
            results[section] = run(ctx)
            # Written after every section, so an interrupted run keeps what it measured.
            report.write_json(results, json_path)
    results["elapsed_s"] = round(time.perf_counter() - ctx.started, 1)
    targets = evaluate(results)
    results["targets"] = [target.as_dict() for target in targets]
    report.write_json(results, json_path)
    for key in ("http",):
        if results.get(key):
            report.plot_latency(results[key], args.out / f"{name}_latency.png", f"{name} ({key})")
    gpu_http = (results.get("gpu") or {}).get("http")
    if gpu_http:
        report.plot_latency(gpu_http, args.out / f"{name}_gpu_latency.png", f"{name} (GPU http)")
    print(report.summary_markdown(results, targets))
    print(f"results: {json_path} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
