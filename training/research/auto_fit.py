"""Fits `model=auto`'s thresholds (`service.core.choice.Thresholds`) to a pair of models: scores
both models on training images under every degradation category (each saved as the file a user
would have, as `auto_choice` does), then picks, from a grid, the thresholds that send the fewest
images to a model 1 dB or more worse than the other (a miss anyone sees) while no category loses
more than 0.1 dB on average against the better of the two models (issue 26's budget); ties go to
the smaller worst-category loss, then the smaller total. Fit on training images, never on the
benchmark sets that `auto_choice` then reports.

Usage (from the repository root):
    python -m training.research.auto_fit --clean models/edsr_x4.onnx \
        --robust models/edsr_x4_real.onnx --limit 100 \
        --data ../shared/data/train-extra/BSDS500-test ../shared/data/train-extra/General100 \
               ../shared/data/train-extra/SunHays80 ../shared/data/train/BSD200 \
        [--per-image rows.json]
    python -m training.research.auto_fit --rows rows.json   # refit saved scores

It prints the current thresholds' and the fitted ones' visible misses and loss per category; copy
the fitted values into `Thresholds`' defaults, then rerun `auto_choice` for the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from service.core.choice import THRESHOLDS, Thresholds, degradations
from service.imaging.evidence import Evidence
from training import data
from training.degradations import CATEGORIES
from training.research.auto_choice import SCALE, load, score_image

#: The grid searched. The JPEG threshold stays where the encoders put it (see `Thresholds`);
#: a sharpness of 0 turns the blur rule off.
GRID = {
    "noise": (2.0, 2.5, 3.0, 3.5),
    "aliasing": tuple(round(0.70 + 0.02 * i, 2) for i in range(11)),
    "sharpness": (0.0, 0.55, 0.58, 0.60, 0.62, 0.65, 0.68, 0.71, 0.74),
}


#: Worst-category losses this close count as equal: a thousandth of a dB on 380 images is noise,
#: and chasing it can cost another category a few hundredths.
TOLERANCE_DB = 0.01
#: What `auto` may lose against the better model, averaged over a category (issue 26's budget).
BUDGET_DB = 0.1
#: One image this much worse than the other model gave is a miss anyone sees: a clean image sent
#: to the robust model loses about 0.1 dB, an aliased one sent to the clean model 2-4 dB.
VISIBLE_DB = 1.0


def score_folders(clean: Path, robust: Path, folders: Sequence[Path], limit: int) -> list[dict]:
    """Both models' PSNR and the evidence for the first `limit` images of each folder (by
    name) under every category."""
    clean_model, _ = load(clean)
    robust_model, _ = load(robust)
    rows = []
    for folder in folders:
        sources = sorted(data.discover_sources([folder], SCALE), key=lambda s: str(s.hr_path))
        for source in sources[:limit]:
            pair = data.load_pair(source, SCALE, "pil")
            # Named relative to its folder: the name seeds the image's noise, so the scores do
            # not depend on how the folder's path was typed.
            name = f"{folder.name}/{source.hr_path.relative_to(folder)}"
            rows += score_image(name, pair.hr, clean_model, robust_model)
        print(f"{folder}: {min(limit, len(sources))} images", flush=True)
    return rows


class Score(NamedTuple):
    """How one set of thresholds does on the scored rows."""

    thresholds: Thresholds
    misses: int  # rows given to the model `VISIBLE_DB` or more under the other
    losses: dict[str, tuple[float, float]]  # `losses()`: per category, loss and robust share

    @property
    def worst(self) -> float:
        """The worst category's loss against the better model (dB, ≤ 0 mostly)."""
        return min(loss for loss, _ in self.losses.values())

    @property
    def total(self) -> float:
        """The categories' losses summed."""
        return sum(loss for loss, _ in self.losses.values())


def choices(rows: Sequence[dict], thresholds: Thresholds) -> list[str]:
    """The model `auto` picks for each row under these thresholds."""
    return [
        "robust" if degradations(Evidence(**row["measures"]), thresholds) else "clean"
        for row in rows
    ]


def misses(rows: Sequence[dict], chosen: Sequence[str]) -> int:
    """How many rows' chosen model gives `VISIBLE_DB` or more under the other one."""
    other = {"clean": "robust", "robust": "clean"}
    return sum(
        row[other[model]] - row[model] >= VISIBLE_DB
        for row, model in zip(rows, chosen, strict=True)
    )


def losses(rows: Sequence[dict], chosen: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per category: auto's mean PSNR (the `chosen` model of each row) minus the better model's
    mean (usually ≤ 0; positive where choosing per image beats both models), and the share of
    images sent to the robust model."""
    result = {}
    for category in CATEGORIES:
        mine = [
            (row, model)
            for row, model in zip(rows, chosen, strict=True)
            if row["category"] == category
        ]
        auto = np.mean([row[model] for row, model in mine])
        best = max(np.mean([row[model] for row, _ in mine]) for model in ("clean", "robust"))
        share = sum(model == "robust" for _, model in mine) / len(mine)
        result[category] = (float(auto - best), share)
    return result


def score(rows: Sequence[dict], thresholds: Thresholds) -> Score:
    """The misses and category losses of `auto` deciding the rows with these thresholds."""
    chosen = choices(rows, thresholds)
    return Score(thresholds, misses(rows, chosen), losses(rows, chosen))


def candidates() -> Iterator[Thresholds]:
    """Every combination of the grid's values, the other thresholds as the service has them."""
    for values in itertools.product(*GRID.values()):
        yield dataclasses.replace(THRESHOLDS, **dict(zip(GRID, values, strict=True)))


def fit(rows: Sequence[dict]) -> Thresholds:
    """The grid's thresholds with the fewest visible misses among those whose worst category
    loses at most `BUDGET_DB` (where none does, all of them); of those, the smallest total loss
    among the ones whose worst category is within `TOLERANCE_DB` of the best."""
    scores = [score(rows, thresholds) for thresholds in candidates()]
    within_budget = [entry for entry in scores if entry.worst >= -BUDGET_DB]
    if within_budget:
        fewest = min(entry.misses for entry in within_budget)
        scores = [entry for entry in within_budget if entry.misses == fewest]
    best_worst = max(entry.worst for entry in scores)
    eligible = [entry for entry in scores if entry.worst >= best_worst - TOLERANCE_DB]
    return max(eligible, key=lambda entry: entry.total).thresholds


def report(rows: Sequence[dict], fitted: Thresholds) -> str:
    """The loss and robust share per category, the current thresholds beside the fitted ones."""
    current, refitted = score(rows, THRESHOLDS), score(rows, fitted)
    lines = [
        f"{label} {entry.thresholds}, {entry.misses} visible misses, worst {entry.worst:+.3f}"
        for label, entry in (("current:", current), ("fitted: ", refitted))
    ]
    lines += [
        "| category | current: auto − best (robust share) | fitted: auto − best (robust share) |",
        "|---|---|---|",
    ]
    for category in CATEGORIES:
        before, share_before = current.losses[category]
        after, share_after = refitted.losses[category]
        lines.append(
            f"| {category} | {before:+.3f} ({share_before:.2f}) "
            f"| {after:+.3f} ({share_after:.2f}) |"
        )
    return "\n".join(lines)


def saved_rows(path: Path) -> list[dict]:
    """The scores an `auto_fit --per-image` run saved.

    Raises:
        ValueError: For scores of the benchmark sets (`auto_choice --per-image`: never fit on
            those), or from before the evidence (or one of its measures) was saved, or missing a
            category.
    """
    rows = json.loads(path.read_text())
    if any("set" in row for row in rows):
        raise ValueError(f"{path} holds benchmark scores (auto_choice): fit on training images")
    measured = {field.name for field in dataclasses.fields(Evidence)}
    if not all(measured <= set(row.get("measures", ())) for row in rows):
        raise ValueError(f"{path} has rows without all of the evidence's measures (older scores?)")
    missing = set(CATEGORIES) - {row["category"] for row in rows}
    if missing:
        raise ValueError(f"{path} has no scores for {', '.join(sorted(missing))}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, nargs="+", help="training image folders")
    source.add_argument("--rows", type=Path, help="refit the scores auto_fit --per-image saved")
    parser.add_argument("--clean", type=Path, help="the clean model (with --data)")
    parser.add_argument("--robust", type=Path, help="the robust model (with --data)")
    parser.add_argument("--limit", type=int, default=100, help="images per folder (by name)")
    parser.add_argument("--per-image", type=Path, help="save every image's scores here (JSON)")
    args = parser.parse_args(argv)
    if args.rows:
        if args.clean or args.robust or args.per_image:
            parser.error("--rows refits saved scores: no --clean, --robust or --per-image")
        try:
            rows = saved_rows(args.rows)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.clean is None or args.robust is None:
        parser.error("--data needs --clean and --robust")
    else:
        rows = score_folders(args.clean, args.robust, args.data, args.limit)
        if args.per_image:
            args.per_image.write_text(json.dumps(rows) + "\n")
    print(report(rows, fit(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
