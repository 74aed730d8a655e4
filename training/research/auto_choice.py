"""Measures `model=auto` (`service.core.choice`) as the model card reports it: per degradation
category and benchmark set, the gain over bicubic of the clean model, the robust model and
`auto`, each category's LR saved as the file a user would have (JPEG for the JPEG and camera
categories, PNG otherwise: `training.degradations.category_file`) and decoded as the service
decodes it; the confusion table of `auto`'s choices; and its cost against a 256² request.

Usage (from the repository root):
    python -m training.research.auto_choice --clean models/edsr_x4.onnx \
        --robust models/edsr_x4_real.onnx --out models/runs/auto_choice.json \
        --data ../shared/data/bench/Set5 ../shared/data/bench/Set14 ../shared/data/bench/BSD100 \
        [--per-image rows.json]

The models run on the service's own engine (`UPSCALER_ENGINE`'s choice, OpenVINO on a CPU) and
tiler; PSNR is the protocol's (Y channel, `scale` pixels shaved).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.config import Settings
from service.core.choice import degradations
from service.core.engines import create_engine
from service.core.pipeline import Pipeline
from service.imaging.decode import decode_image
from service.imaging.evidence import Evidence
from training import data
from training.degradations import CATEGORIES, category_file
from training.protocol import psnr_y

SCALE = 4
MAX_PIXELS = 1 << 24
Model = Callable[[np.ndarray], np.ndarray]


def load(path: Path) -> tuple[Model, Pipeline]:
    """A model as the service runs it: an RGB uint8 upscaler, and its pipeline."""
    settings = Settings(model_path=path)
    pipeline = Pipeline.for_engine(create_engine(settings), settings)
    return (lambda rgb: pipeline.upscale_rgb(rgb)), pipeline


def score_file(
    file: bytes, hr: np.ndarray, clean: Model, robust: Model
) -> tuple[dict[str, float], Evidence]:
    """An LR file decoded as the service decodes it: both models' PSNR against `hr`, bicubic's,
    the seconds its evidence took to measure, and that evidence."""
    decoded = decode_image(file, max_pixels=MAX_PIXELS)
    started = time.perf_counter()
    evidence = Evidence.of(decoded)
    seconds = time.perf_counter() - started
    lr = decoded.rgb
    scores = {
        "clean": psnr_y(clean(lr), hr, SCALE),
        "robust": psnr_y(robust(lr), hr, SCALE),
        "bicubic": psnr_y(data.bicubic_upscale(lr, SCALE), hr, SCALE),
        "evidence_seconds": seconds,
    }
    return scores, evidence


def score_image(name: str, hr: np.ndarray, clean: Model, robust: Model) -> list[dict]:
    """One image under every category: both models' PSNR, bicubic's, and auto's choice."""
    rows = []
    for category in CATEGORIES:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        scores, evidence = score_file(category_file(category, hr, SCALE, rng), hr, clean, robust)
        found = degradations(evidence)
        rows.append(
            {
                "image": name,
                "category": category,
                **scores,
                "chose": "robust" if found else "clean",
                "found": list(found),
                "evidence": evidence.describe(),
                "measures": dataclasses.asdict(evidence),
            }
        )
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Per category: mean gains over bicubic (clean, robust, auto), auto minus the better of the
    two models, and how often auto chose each."""
    summary = {}
    for category in CATEGORIES:
        mine = [row for row in rows if row["category"] == category]

        def gain(key: str, rows: Sequence[dict] = mine) -> float:
            return float(np.mean([row[key] - row["bicubic"] for row in rows]))

        auto = float(np.mean([row[row["chose"]] - row["bicubic"] for row in mine]))
        counts = Counter(row["chose"] for row in mine)
        summary[category] = {
            "clean": round(gain("clean"), 3),
            "robust": round(gain("robust"), 3),
            "auto": round(auto, 3),
            "auto_minus_best": round(auto - max(gain("clean"), gain("robust")), 3),
            "chose_clean": counts["clean"],
            "chose_robust": counts["robust"],
        }
    return summary


def cost(pipeline: Pipeline, side: int = 256) -> dict:
    """Seconds of the evidence against the model time of a side² request (median of 3)."""
    rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    evidence, model = [], []
    for _ in range(3):
        started = time.perf_counter()
        Evidence.measure(rgb, None)
        evidence.append(time.perf_counter() - started)
        started = time.perf_counter()
        pipeline.upscale_rgb(rgb)
        model.append(time.perf_counter() - started)
    share = float(np.median(evidence) / np.median(model))
    return {
        "side": side,
        "evidence_ms": round(float(np.median(evidence)) * 1000, 2),
        "model_ms": round(float(np.median(model)) * 1000, 1),
        "share": round(share, 5),
    }


def markdown(results: dict) -> str:
    """The card's tables: gains per category and set, and the confusion table."""
    sets = list(results["sets"])
    lines = ["| category | " + " | ".join(f"{s} clean / robust / auto (auto − best)" for s in sets)]
    lines.append("|---" * (len(sets) + 1) + "|")
    for category in CATEGORIES:
        cells = []
        for name in sets:
            row = results["sets"][name][category]
            figures = f"{row['clean']:+.2f} / {row['robust']:+.2f} / {row['auto']:+.2f}"
            cells.append(f"{figures} ({row['auto_minus_best']:+.2f})")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += ["", "| category | chose clean | chose robust |", "|---|---|---|"]
    for category in CATEGORIES:
        clean = sum(results["sets"][s][category]["chose_clean"] for s in sets)
        robust = sum(results["sets"][s][category]["chose_robust"] for s in sets)
        lines.append(f"| {category} | {clean} | {robust} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=Path, required=True)
    parser.add_argument("--robust", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--per-image", type=Path, help="write every image's scores here (JSON)")
    args = parser.parse_args(argv)
    clean, clean_pipeline = load(args.clean)
    robust, _ = load(args.robust)
    results: dict = {"clean": str(args.clean), "robust": str(args.robust), "sets": {}}
    per_image: list[dict] = []
    for folder in args.data:
        rows = []
        for source in data.discover_sources([folder], SCALE):
            pair = data.load_pair(source, SCALE, "pil")
            rows += score_image(pair.name, pair.hr, clean, robust)
        results["sets"][folder.name] = summarize(rows)
        per_image += [{"set": folder.name, **row} for row in rows]
        print(f"{folder.name}: {len(rows) // len(CATEGORIES)} images", flush=True)
    results["cost"] = cost(clean_pipeline)
    print(markdown(results))
    print(f"cost: {results['cost']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.per_image:
        args.per_image.write_text(json.dumps(per_image) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
