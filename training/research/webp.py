"""Measures `model=auto` on lossy WebP files, which the degradation categories do not make:
photographs (each image's clean LR) and drawings (`training.research.drawings`' hard and
antialiased kinds) saved by Pillow's libwebp at each quality, decoded as the service decodes
them. Per quality and kind of picture it prints the gain over bicubic of both models and of
`auto`, `auto` minus the better model, how many went to the robust model, the visible misses
(1 dB or more under the other model), and the quality the evidence read from the file.

Usage (from the repository root):
    python -m training.research.webp --clean models/edsr_x4.onnx \
        --robust models/edsr_x4_real.onnx --quality 50 75 80 85 90 95 \
        --data ../shared/data/train-extra/BSDS500-test [--limit 100] [--drawings 32]

Fit the WebP threshold (`Thresholds.webp_quality`) on training images, as `auto_fit` does the
others, then report it on the benchmark sets.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.choice import degradations
from training import data
from training.research.auto_choice import SCALE, Model, load, score_file
from training.research.auto_fit import misses
from training.research.drawings import pair, random_drawing


def webp_file(lr: np.ndarray, quality: int) -> bytes:
    """The LR image as a lossy WebP file of that quality (libwebp's other settings default)."""
    buffer = io.BytesIO()
    Image.fromarray(lr).save(buffer, "WEBP", quality=quality)
    return buffer.getvalue()


Picture = tuple[str, np.ndarray, np.ndarray]


def pictures(folders: Sequence[Path], limit: int, drawings: int) -> Iterator[Picture]:
    """(kind, HR, clean LR) of the first `limit` photographs of each folder, then of `drawings`
    hard and antialiased drawings."""
    for folder in folders:
        sources = sorted(data.discover_sources([folder], SCALE), key=lambda s: str(s.hr_path))
        for source in sources[:limit]:
            hr = data.load_pair(source, SCALE, "pil").hr
            yield "photographs", hr, data.bicubic_downscale(hr, SCALE)
    for seed in range(drawings):
        for kind in ("hard", "antialiased"):
            lr, hr = pair(random_drawing(seed), kind)
            yield "drawings", hr, lr


def score(
    sources: Iterator[Picture], qualities: Sequence[int], clean: Model, robust: Model
) -> list[dict]:
    """Every picture at every quality: both models' PSNR, bicubic's, the evidence, the choice."""
    rows = []
    for kind, hr, lr in sources:
        for quality in qualities:
            scores, evidence = score_file(webp_file(lr, quality), hr, clean, robust)
            rows.append(
                {
                    "kind": kind,
                    "quality": quality,
                    **scores,
                    "read": evidence.webp_quality,
                    "chose": "robust" if degradations(evidence) else "clean",
                }
            )
    return rows


def summary(rows: Sequence[dict]) -> str:
    """The table: per kind of picture and quality, the gains, the choices and the quality read."""
    lines = [
        "| picture | quality | clean | robust | auto | auto − best | to robust | misses | read |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in dict.fromkeys(row["kind"] for row in rows):
        for quality in dict.fromkeys(row["quality"] for row in rows):
            mine = [row for row in rows if row["kind"] == kind and row["quality"] == quality]
            gain = {
                key: float(np.mean([row[key] - row["bicubic"] for row in mine]))
                for key in ("clean", "robust")
            }
            auto = float(np.mean([row[row["chose"]] - row["bicubic"] for row in mine]))
            chosen = [row["chose"] for row in mine]
            read = [row["read"] for row in mine]
            lines.append(
                f"| {kind} ({len(mine)}) | {quality} | {gain['clean']:+.2f} | "
                f"{gain['robust']:+.2f} | {auto:+.2f} | {auto - max(gain.values()):+.2f} | "
                f"{chosen.count('robust')} | {misses(mine, chosen)} | "
                f"{min(read)}–{max(read)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=Path, required=True, help="the clean model")
    parser.add_argument("--robust", type=Path, required=True, help="the robust model")
    parser.add_argument("--quality", type=int, nargs="+", required=True, help="WebP qualities")
    parser.add_argument("--data", type=Path, nargs="*", default=[], help="photograph folders")
    parser.add_argument("--limit", type=int, default=100, help="photographs of each folder")
    parser.add_argument("--drawings", type=int, default=0, help="drawings of each kind")
    args = parser.parse_args(argv)
    if not args.data and args.drawings < 1:
        parser.error("nothing to measure: give --data folders or --drawings N")
    if any(not 1 <= quality <= 100 for quality in args.quality):
        parser.error("--quality values are 1-100")
    (clean, _), (robust, _) = load(args.clean), load(args.robust)
    rows = score(pictures(args.data, args.limit, args.drawings), args.quality, clean, robust)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
