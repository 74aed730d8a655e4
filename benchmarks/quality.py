"""Quality of every engine and precision against onnxruntime fp32, on folders of images.

`python -m benchmarks quality --data DIR [DIR ...] [--model PATH] [--limit N] [--out FILE]`

Each image of a folder is the high-resolution ground truth: it is cropped to a multiple of the
scale, downscaled by that factor (Pillow bicubic) and upscaled whole by every engine the service
can run here (onnxruntime fp32 as the reference, OpenVINO fp32, OpenVINO bf16 where the CPU has
bfloat16). Reported per folder and engine: the mean Y-channel PSNR against the ground truth
(border of `scale` pixels shaved, as in the SR literature), its difference from onnxruntime
fp32, and the PSNR of the engine's output against onnxruntime fp32's (how far apart the two
outputs are, in 8-bit RGB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.config import Settings
from service.core.engines import create_engine
from service.core.engines.ortconfig import openvino_installed
from training.protocol import psnr, psnr_y

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def engine_runners(model: Path, threads: int = 0) -> tuple[dict[str, Callable], dict[str, str]]:
    """The engines to score (the reference first), and those skipped with the reason."""
    base = Settings(model_path=model, providers=["CPUExecutionProvider"], intra_op_threads=threads)
    configs = {"onnxruntime_fp32": {"engine": "onnxruntime", "precision": "fp32"}}
    skipped: dict[str, str] = {}
    if openvino_installed():
        configs["openvino_fp32"] = {"engine": "openvino", "precision": "fp32"}
        configs["openvino_bf16"] = {"engine": "openvino", "precision": "bf16"}
    else:
        skipped["openvino"] = "openvino not installed"
    runners = {}
    for name, update in configs.items():
        engine = create_engine(base.model_copy(update=update))
        info = engine.info
        if info.engine != update["engine"] or info.precision != update["precision"]:
            skipped[name] = info.precision_reason or info.fallback_reason or "not available"
            continue
        runners[name] = engine.run
    return runners, skipped


def _images(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


def score_folder(
    folder: Path,
    runners: dict[str, Callable],
    scale: int = 4,
    limit: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Scores every engine on the images of `folder` (see the module docstring)."""
    names = list(runners)
    reference = names[0]
    y_scores: dict[str, list[float]] = {name: [] for name in names}
    vs_reference: dict[str, list[float]] = {name: [] for name in names[1:]}
    files = _images(folder, limit)
    for path in files:
        hr_image = Image.open(path).convert("RGB")
        width, height = (side - side % scale for side in hr_image.size)
        hr_image = hr_image.crop((0, 0, width, height))
        lr = hr_image.resize((width // scale, height // scale), Image.Resampling.BICUBIC)
        batch = np.asarray(lr, dtype=np.float32)[np.newaxis]
        hr = np.asarray(hr_image)
        outputs = {}
        for name in names:
            raw = runners[name](batch)[0]
            outputs[name] = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
            y_scores[name].append(psnr_y(outputs[name], hr, scale))
        for name in names[1:]:
            vs_reference[name].append(psnr(outputs[name], outputs[reference]))
        log(
            f"quality: {folder.name}/{path.name} "
            + ", ".join(f"{name} {y_scores[name][-1]:.4f}" for name in names)
        )
    reference_mean = float(np.mean(y_scores[reference]))
    rows = {}
    for name in names:
        mean = float(np.mean(y_scores[name]))
        row: dict[str, Any] = {
            "y_psnr_db": round(mean, 4),
            "delta_vs_onnxruntime_fp32_db": round(mean - reference_mean, 4),
        }
        if name in vs_reference:
            finite = [v for v in vs_reference[name] if np.isfinite(v)]
            row["output_psnr_vs_onnxruntime_fp32_db"] = (
                round(float(np.mean(finite)), 2) if finite else "identical"
            )
        rows[name] = row
    return {"folder": str(folder), "images": len(files), "engines": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """The `quality` command line; prints a markdown table and writes JSON with `--out`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="image folders")
    parser.add_argument("--model", type=Path, default=Path("models/edsr_x4.onnx"))
    parser.add_argument("--limit", type=int, default=None, help="first N images per folder")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: all)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr)

    runners, skipped = engine_runners(args.model, args.threads)
    for name, reason in skipped.items():
        log(f"quality: {name} skipped ({reason})")
    sets = [score_folder(folder, runners, limit=args.limit, log=log) for folder in args.data]
    results = {"model": str(args.model), "limit": args.limit, "skipped": skipped, "sets": sets}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| set | images | engine | Y-PSNR (dB) | Δ vs onnxruntime fp32 (dB) | output PSNR vs it |",
        "|---|---|---|---|---|---|",
    ]
    for result in sets:
        for name, row in result["engines"].items():
            lines.append(
                f"| {Path(result['folder']).name} | {result['images']} | {name} | "
                f"{row['y_psnr_db']:.4f} | {row['delta_vs_onnxruntime_fp32_db']:+.4f} | "
                f"{row.get('output_psnr_vs_onnxruntime_fp32_db', '–')} |"
            )
    for name, reason in skipped.items():
        lines.append(f"\n{name}: skipped ({reason})")
    print("\n".join(lines))
    return 0
