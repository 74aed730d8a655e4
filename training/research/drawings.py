"""Measures both models and `model=auto` on drawings at their own size: a screenshot, a diagram,
a slide, which no benchmark set holds. Each drawing is random flat shapes, lines and text,
rendered twice from the same description: at the LR size and at `SCALE` times it (the ground
truth), so the pair is what a vector drawing would give at either size. The kinds:

- `hard`: rendered without antialiasing (shapes; the text is antialiased, as on a screen);
- `antialiased`: rendered at 16 times the LR size and reduced by box averaging to each size, as
  vector software draws;
- `cv2-bicubic`, `cv2-bilinear`, `nearest`: the antialiased kind's HR resized to the LR size
  without smoothing (a drawing made into a thumbnail), as the degradation categories of the same
  names do to photographs.

Usage (from the repository root):
    python -m training.research.drawings --clean models/edsr_x4.onnx \
        --robust models/edsr_x4_real.onnx --count 32 [--out drawings.json]

It prints, per kind, the gain over bicubic of each model and of `auto` (with and without the
`hard-edges` rule), how many went to the robust model, and `auto`'s visible misses (1 dB or more
under the other model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.core.choice import THRESHOLDS, degradations
from service.imaging.evidence import Evidence
from training import data
from training.degradations import downscale
from training.protocol import psnr_y
from training.research.auto_choice import SCALE, load
from training.research.auto_fit import VISIBLE_DB

#: Side of each drawing at its LR size.
SIDE = 128
#: How much finer than the LR size the antialiased kind is drawn before the box reduction.
SUPERSAMPLE = 16
#: Each kind, and for the resized ones the `training.degradations.downscale` method.
RESIZED = {"cv2-bicubic": "cv2_cubic", "cv2-bilinear": "cv2_linear", "nearest": "nearest"}
KINDS = ("hard", "antialiased", *RESIZED)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz 0123456789"


def random_drawing(seed: int) -> list[tuple]:
    """A drawing as plain data, in LR pixels: a flat ground, then 6-15 boxes, ellipses, lines,
    triangles and words, each `(kind, geometry, colour, extra)`."""
    rng = np.random.default_rng(seed)

    def colour(low: int = 0) -> tuple[int, ...]:
        return tuple(int(v) for v in rng.integers(low, 256, 3))

    shapes: list[tuple] = [("ground", (0, 0, SIDE, SIDE), colour(150), 0)]
    for _ in range(rng.integers(6, 16)):
        kind = str(rng.choice(["box", "ellipse", "line", "triangle", "text"]))
        x, y = rng.uniform(0, SIDE, 2)
        w, h = rng.uniform(8, SIDE / 2, 2)
        if kind == "text":
            words = "".join(rng.choice(list(_LETTERS), 12))
            shapes.append((kind, (x, y), colour(), (float(rng.uniform(9, 20)), words)))
        elif kind == "line":
            end = (x + w, y + rng.uniform(-h, h))
            shapes.append((kind, (x, y, *end), colour(), int(rng.integers(1, 4))))
        elif kind == "triangle":
            shapes.append((kind, tuple(rng.uniform(0, SIDE, 6)), colour(), 0))
        else:
            shapes.append((kind, (x, y, x + w, y + h), colour(), int(rng.integers(0, 3))))
    return shapes


def render(shapes: Sequence[tuple], scale: int) -> np.ndarray:
    """The drawing at `scale` times its LR size, without antialiasing (but for the text)."""
    image = Image.new("RGB", (SIDE * scale, SIDE * scale))
    draw = ImageDraw.Draw(image)
    for kind, geometry, colour, extra in shapes:
        at = [v * scale for v in geometry]
        if kind == "ground":
            draw.rectangle(at, fill=colour)
        elif kind == "box":
            draw.rectangle(at, fill=colour, outline=(0, 0, 0), width=extra * scale)
        elif kind == "ellipse":
            draw.ellipse(at, fill=colour, outline=(0, 0, 0), width=extra * scale)
        elif kind == "line":
            draw.line(at, fill=colour, width=extra * scale)
        elif kind == "triangle":
            draw.polygon(at, fill=colour)
        else:
            size, words = extra
            draw.text(at, words, fill=colour, font=ImageFont.load_default(size * scale))
    return np.asarray(image)


def pair(shapes: Sequence[tuple], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The drawing's (LR, HR) of that kind."""
    if kind == "hard":
        return render(shapes, 1), render(shapes, SCALE)
    fine = Image.fromarray(render(shapes, SUPERSAMPLE))
    lr, hr = (
        np.asarray(fine.resize((SIDE * s, SIDE * s), Image.Resampling.BOX)) for s in (1, SCALE)
    )
    if kind in RESIZED:
        lr = downscale(hr, SCALE, RESIZED[kind])
    return lr, hr


def score(count: int, clean_path: Path, robust_path: Path) -> list[dict]:
    """Every drawing of each kind: the models' and bicubic's PSNR, the evidence, and `auto`'s
    choice with the service's thresholds and without the hard-edges rule."""
    (clean, _), (robust, _) = load(clean_path), load(robust_path)
    no_hard_edges = dataclasses.replace(THRESHOLDS, hard_edges=math.inf)
    rows = []
    for seed in range(count):
        shapes = random_drawing(seed)
        for kind in KINDS:
            lr, hr = pair(shapes, kind)
            evidence = Evidence.measure(lr, None)
            rows.append(
                {
                    "seed": seed,
                    "kind": kind,
                    "clean": psnr_y(clean(lr), hr, SCALE),
                    "robust": psnr_y(robust(lr), hr, SCALE),
                    "bicubic": psnr_y(data.bicubic_upscale(lr, SCALE), hr, SCALE),
                    "auto": "robust" if degradations(evidence) else "clean",
                    "auto_before": "robust" if degradations(evidence, no_hard_edges) else "clean",
                    "evidence": evidence.describe(),
                }
            )
    return rows


def _gain(rows: Sequence[dict], model_of: Callable[[dict], str]) -> float:
    """Mean gain over bicubic of the model `model_of` picks for each row."""
    return float(np.mean([row[model_of(row)] - row["bicubic"] for row in rows]))


def _choice(rows: Sequence[dict], key: str) -> str:
    """`auto`'s gain with the choices under `key`, its robust count and visible misses."""
    other = {"clean": "robust", "robust": "clean"}
    robust = sum(row[key] == "robust" for row in rows)
    missed = sum(row[other[row[key]]] - row[row[key]] >= VISIBLE_DB for row in rows)
    return f"{_gain(rows, lambda row: row[key]):+.2f} | {robust} | {missed}"


def summary(rows: Sequence[dict]) -> str:
    """Per kind: mean gains over bicubic of each model and of `auto` (its robust count and
    visible misses), with the service's thresholds and without the hard-edges rule."""
    lines = [
        "| drawings | clean | robust | auto | to robust | misses "
        "| auto without hard-edges | to robust | misses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        clean, robust = _gain(mine, lambda _: "clean"), _gain(mine, lambda _: "robust")
        lines.append(
            f"| {kind} ({len(mine)}) | {clean:+.2f} | {robust:+.2f} "
            f"| {_choice(mine, 'auto')} | {_choice(mine, 'auto_before')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=Path, required=True)
    parser.add_argument("--robust", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32, help="drawings of each kind")
    parser.add_argument("--out", type=Path, help="write every drawing's scores here (JSON)")
    args = parser.parse_args(argv)
    rows = score(args.count, args.clean, args.robust)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
