"""Measures both models and `model=auto` on drawings at their own size: a screenshot, a diagram,
a slide, which no benchmark set holds. Each drawing is random flat shapes, lines and text,
rendered once at 16 times the LR size and made from that into the LR image and into the HR one
`SCALE` times its size (the ground truth), so both show the same geometry. The kinds:

- `hard`: sampled at each size's pixel centres, as a renderer without antialiasing draws (text
  included);
- `antialiased`: box-reduced to each size, as vector software draws;
- `cv2-bicubic`, `cv2-bilinear`, `nearest`: the antialiased kind's HR resized to the LR size
  without smoothing (a drawing made into a thumbnail), as the degradation categories of the same
  names do to photographs;
- `hard-jpeg`, `antialiased-jpeg`: those two saved as JPEG of quality 95 (a screenshot shared as
  a JPEG), above the quality `auto` counts as degraded, so only the drawing's look can send it
  to the robust model. The others are PNG files.

Usage (from the repository root):
    python -m training.research.drawings --clean models/edsr_x4.onnx \
        --robust models/edsr_x4_real.onnx --count 32 [--out drawings.json]

It prints, per kind, the gain over bicubic of each model and of `auto` (with and without the
drawings' rules, `hard-edges`, `flat` and `noiseless`), how many went to the robust model, and
`auto`'s visible misses (1 dB or more under the other model).

    python -m training.research.drawings --write DIR --count 100

saves antialiased drawings at the HR size instead (seeds from 10,000, apart from the scored
ones), to train the robust model on beside the photographs (docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.core.choice import THRESHOLDS, degradations
from training.degradations import downscale, jpeg_file, png_file
from training.research.auto_choice import SCALE, load, score_file
from training.research.auto_fit import misses

#: Side of each drawing at its LR size.
SIDE = 128
#: How much finer than the LR size each drawing is rendered before it is sampled or reduced.
SUPERSAMPLE = 16
#: The resized kinds and their `training.degradations.downscale` methods.
RESIZED = {"cv2-bicubic": "cv2_cubic", "cv2-bilinear": "cv2_linear", "nearest": "nearest"}
#: The kinds saved as JPEG, each the JPEG of another kind, at this quality.
SAVED_AS_JPEG = {"hard-jpeg": "hard", "antialiased-jpeg": "antialiased"}
JPEG_QUALITY = 95
KINDS = ("hard", "antialiased", *RESIZED, *SAVED_AS_JPEG)
#: The first seed of the drawings written to train on, apart from the scored ones (0, 1, ...).
TRAINING_SEED = 10_000
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz 0123456789"


class Shape(NamedTuple):
    """One element of a drawing, in LR pixels."""

    kind: str  # ground, box, ellipse, line, triangle or text
    geometry: tuple[float, ...]  # corners, a line's ends, a triangle's points, the text's origin
    colour: tuple[int, ...]
    width: int = 0  # of a box's or ellipse's black outline, or of a line
    text: str = ""
    size: float = 0.0  # the text's font size


def random_drawing(seed: int) -> list[Shape]:
    """A flat ground, then 6-15 boxes, ellipses, lines, triangles and words."""
    rng = np.random.default_rng(seed)

    def colour(low: int = 0) -> tuple[int, ...]:
        return tuple(int(v) for v in rng.integers(low, 256, 3))

    shapes = [Shape("ground", (0, 0, SIDE, SIDE), colour(150))]
    for _ in range(rng.integers(6, 16)):
        kind = str(rng.choice(["box", "ellipse", "line", "triangle", "text"]))
        x, y = rng.uniform(0, SIDE, 2)
        w, h = rng.uniform(8, SIDE / 2, 2)
        if kind == "text":
            text = "".join(rng.choice(list(_LETTERS), 12))
            shapes.append(Shape(kind, (x, y), colour(), size=float(rng.uniform(9, 20)), text=text))
        elif kind == "line":
            end = (x + w, y + rng.uniform(-h, h))
            shapes.append(Shape(kind, (x, y, *end), colour(), int(rng.integers(1, 4))))
        elif kind == "triangle":
            shapes.append(Shape(kind, tuple(rng.uniform(0, SIDE, 6)), colour()))
        else:
            shapes.append(Shape(kind, (x, y, x + w, y + h), colour(), int(rng.integers(0, 3))))
    return shapes


def render(shapes: Sequence[Shape]) -> np.ndarray:
    """The drawing at `SUPERSAMPLE` times its LR size (shapes without antialiasing)."""
    scale = SUPERSAMPLE
    image = Image.new("RGB", (SIDE * scale, SIDE * scale))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        at = [v * scale for v in shape.geometry]
        outline = {"outline": (0, 0, 0), "width": shape.width * scale}
        if shape.kind == "ground":
            draw.rectangle(at, fill=shape.colour)
        elif shape.kind == "box":
            draw.rectangle(at, fill=shape.colour, **outline)
        elif shape.kind == "ellipse":
            draw.ellipse(at, fill=shape.colour, **outline)
        elif shape.kind == "line":
            draw.line(at, fill=shape.colour, width=shape.width * scale)
        elif shape.kind == "triangle":
            draw.polygon(at, fill=shape.colour)
        else:
            font = ImageFont.load_default(shape.size * scale)
            draw.text(at, shape.text, fill=shape.colour, font=font)
    return np.asarray(image)


def pair(shapes: Sequence[Shape], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The drawing's (LR, HR) of that kind, both from one fine rendering: sampled at each size's
    pixel centres (`hard`, as a renderer without antialiasing draws), or box-reduced to each
    size (`antialiased`), whose HR the resized kinds shrink without smoothing. The kinds saved
    as JPEG give their source kind's pair (`lr_file` makes the JPEG).

    Raises:
        ValueError: For a kind not in `KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    kind = SAVED_AS_JPEG.get(kind, kind)
    fine = render(shapes)
    if kind == "hard":
        lr_step, hr_step = SUPERSAMPLE, SUPERSAMPLE // SCALE
        return fine[lr_step // 2 :: lr_step, lr_step // 2 :: lr_step], fine[
            hr_step // 2 :: hr_step, hr_step // 2 :: hr_step
        ]
    lr, hr = (
        np.asarray(Image.fromarray(fine).resize((SIDE * s, SIDE * s), Image.Resampling.BOX))
        for s in (1, SCALE)
    )
    return (downscale(hr, SCALE, RESIZED[kind]) if kind in RESIZED else lr), hr


def lr_file(lr: np.ndarray, kind: str) -> bytes:
    """The LR drawing as the file a user would have: a JPEG for the kinds saved so, else PNG."""
    return jpeg_file(lr, JPEG_QUALITY) if kind in SAVED_AS_JPEG else png_file(lr)


def score(count: int, clean_path: Path, robust_path: Path) -> list[dict]:
    """Every drawing of each kind: the models' and bicubic's PSNR, the evidence, and `auto`'s
    choice with the service's thresholds and without the drawings' rules."""
    (clean, _), (robust, _) = load(clean_path), load(robust_path)
    photographs_only = dataclasses.replace(
        THRESHOLDS, hard_edges=math.inf, flat=math.inf, noiseless=-math.inf
    )
    rows = []
    for seed in range(count):
        shapes = random_drawing(seed)
        for kind in KINDS:
            lr, hr = pair(shapes, kind)
            scores, evidence = score_file(lr_file(lr, kind), hr, clean, robust)
            found, without_rule = degradations(evidence), degradations(evidence, photographs_only)
            rows.append(
                {
                    "seed": seed,
                    "kind": kind,
                    **scores,
                    "found": list(found),
                    "auto": "robust" if found else "clean",
                    "auto_without_rule": "robust" if without_rule else "clean",
                    "evidence": evidence.describe(),
                }
            )
    return rows


def _gain(rows: Sequence[dict], model_of: Callable[[dict], str]) -> float:
    """Mean gain over bicubic of the model `model_of` picks for each row."""
    return float(np.mean([row[model_of(row)] - row["bicubic"] for row in rows]))


def _auto_cells(rows: Sequence[dict], key: str) -> str:
    """Table cells: `auto`'s gain with the choices under `key`, its robust count and visible
    misses."""
    chosen = [row[key] for row in rows]
    missed = misses(rows, chosen)
    return f"{_gain(rows, lambda row: row[key]):+.2f} | {chosen.count('robust')} | {missed}"


def summary(rows: Sequence[dict]) -> str:
    """Per kind: mean gains over bicubic of each model and of `auto` (its robust count and
    visible misses), with the service's thresholds and without the drawings' rules."""
    lines = [
        "| drawings | clean | robust | auto | to robust | misses "
        "| auto without the drawings' rules | to robust | misses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        clean, robust = _gain(mine, lambda _: "clean"), _gain(mine, lambda _: "robust")
        lines.append(
            f"| {kind} ({len(mine)}) | {clean:+.2f} | {robust:+.2f} "
            f"| {_auto_cells(mine, 'auto')} | {_auto_cells(mine, 'auto_without_rule')} |"
        )
    return "\n".join(lines)


def write_training_drawings(folder: Path, count: int) -> None:
    """Saves `count` antialiased drawings at the HR size as PNG files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(TRAINING_SEED, TRAINING_SEED + count):
        hr = pair(random_drawing(seed), "antialiased")[1]
        Image.fromarray(hr).save(folder / f"drawing_{seed}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=Path, help="the clean model (to score)")
    parser.add_argument("--robust", type=Path, help="the robust model (to score)")
    parser.add_argument(
        "--count", type=int, default=32, help="drawings of each kind (with --write: in all)"
    )
    parser.add_argument("--out", type=Path, help="write every drawing's scores here (JSON)")
    parser.add_argument("--write", type=Path, metavar="DIR", help="save drawings to train on")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    scoring = (args.clean, args.robust, args.out)
    if args.write is not None:
        if any(value is not None for value in scoring):
            parser.error("--write saves drawings; --clean, --robust and --out score them")
        write_training_drawings(args.write, args.count)
        return 0
    if args.clean is None or args.robust is None:
        parser.error("--clean and --robust are needed to score (or --write DIR)")
    rows = score(args.count, args.clean, args.robust)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
