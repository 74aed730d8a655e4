"""Produces the model card's figures: the benchmark table against bicubic and the OpenCV peer
models on both kinds of LR, the training curve, and a before/after picture.

Usage (from the repository root):
    python -m training.research.model_card --model models/edsr_x4.onnx --run RUN_DIR \
        --bench ../shared/data/bench/Set5 ../shared/data/bench/Set14 ../shared/data/bench/BSD100 \
        --peers ../shared/data/peers --out models/edsr_x4.json --self-ensemble \
        --curve models/training_curve.png --picture docs/images/before_after.png

A model trained in stages (each `--init-from` the previous stage's `best.keras`) passes every
stage's run folder, in order, as repeated `--run`; `--previous OLD_CARD.json` keeps the replaced
model's figures in the tables and in the new card.

It writes the JSON (the export's metadata plus every figure) and prints the markdown tables that
`models/README.md` shows, so the card can be regenerated after every retraining.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.core.ensemble import self_ensemble
from training import data
from training.degradations import CATEGORIES, CATEGORY_LABELS
from training.evaluate import (
    Upscaler,
    evaluate_categories,
    evaluate_folder,
    format_category_table,
    load_upscaler,
)

# Published x4 figures (PSNR, SSIM) on Set5 / Set14 / BSD100, standard protocol.
PUBLISHED = {
    "VDSR (291 images)": {
        "source": "Kim, Lee, Lee: Accurate Image Super-Resolution Using Very Deep Convolutional "
        "Networks, CVPR 2016, Table 3",
        "Set5": (31.35, 0.8838),
        "Set14": (28.01, 0.7674),
        "BSD100": (27.29, 0.7251),
    },
    "EDSR baseline (DIV2K)": {
        "source": "Lim et al.: Enhanced Deep Residual Networks for Single Image Super-Resolution, "
        "CVPRW 2017 (baseline model, as tabulated by later papers)",
        "Set5": (32.09, 0.8938),
        "Set14": (28.58, 0.7813),
        "BSD100": (27.57, 0.7357),
    },
}

THIS_MODEL = "EDSR x4 (this model)"
THIS_MODEL_ENSEMBLE = "EDSR x4 (this model), self-ensemble"

PEERS = {"FSRCNN": ("FSRCNN_x4.pb", "fsrcnn"), "ESPCN": ("ESPCN_x4.pb", "espcn")}


def opencv_peer(model_file: Path, algorithm: str, scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenCV `dnn_superres` model as an RGB-in, RGB-out upscaler."""
    import cv2

    engine = cv2.dnn_superres.DnnSuperResImpl_create()
    engine.readModel(str(model_file))
    engine.setModel(algorithm, scale)

    def upscale(lr: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(lr[..., ::-1])
        return engine.upsample(bgr)[..., ::-1].astype(np.float32)

    return upscale


def benchmark(
    methods: dict[str, Callable], bench: list[Path], scale: int, standard_only=frozenset()
) -> dict:
    """Scores every method on every set for every LR kind (`data.LR_KINDS`), except the
    methods in `standard_only` (the 8-times-slower self-ensemble), scored on standard LR only.

    Returns:
        {lr_kind: {method: {set: {"psnr", "ssim", "seconds_per_image"}}}}, with a "bicubic" method
        taken from the protocol's own bicubic baseline.
    """
    results: dict = {}
    for kind in data.LR_KINDS:
        results[kind] = table = {"bicubic": {}}
        for name, method in methods.items():
            if kind != "pil" and name in standard_only:
                continue
            table[name] = {}
            for folder in bench:
                row = evaluate_folder(method, folder, scale, lr_kind=kind)
                seconds = round(row["seconds_per_image"], 4)
                table[name][row["set"]] = {**_figures(row), "seconds_per_image": seconds}
                table["bicubic"][row["set"]] = _figures(row, "bicubic_")
    return results


def _figures(row: dict, prefix: str = "") -> dict:
    return {"psnr": round(row[f"{prefix}psnr"], 3), "ssim": round(row[f"{prefix}ssim"], 4)}


def markdown_table(results: dict, kind: str, sets: list[str], previous: dict | None = None) -> str:
    """The PSNR / SSIM table for one LR kind, with the previous model's rows (when given) and the
    published figures (standard LR) beside."""
    rows = dict(results[kind])
    for method, per_set in (previous or {}).get(kind, {}).items():
        rows[method.replace(THIS_MODEL, "EDSR x4 (previous model)")] = per_set
    for method, figures in PUBLISHED.items() if kind == "pil" else ():
        rows[f"{method}, published"] = {
            s: {"psnr": figures[s][0], "ssim": figures[s][1]} for s in sets if s in figures
        }
    lines = ["| method | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for method, per_set in rows.items():
        cells = [
            f"{per_set[s]['psnr']:.2f} / {per_set[s]['ssim']:.4f}" if s in per_set else "–"
            for s in sets
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _previous_rows(previous_card: dict) -> dict:
    """{lr_kind: {method: {set: figures}}} of the replaced model's own rows (plain and
    self-ensemble), taken from its card."""
    results = previous_card.get("evaluation", {}).get("results", {})
    return {
        kind: {
            method: per_set for method, per_set in table.items() if method.startswith(THIS_MODEL)
        }
        for kind, table in results.items()
    }


def read_history(run_dir: Path) -> list[dict]:
    """The run's history.csv rows with numeric values."""
    with (run_dir / "history.csv").open() as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def chain_histories(run_dirs: list[Path]) -> tuple[list[dict], list[float]]:
    """The histories of a model's training stages on one step axis.

    A stage after the first fine-tunes the previous stage's best checkpoint (`--init-from
    RUN/best.keras`), so its steps are counted from the previous stage's best step, and the
    previous stage's rows after that step (which the shipped weights never saw) are dropped.

    Returns:
        The chained rows (with `step` on the common axis) and the step at which each later
        stage begins.
    """
    rows: list[dict] = []
    boundaries: list[float] = []
    offset = 0.0
    for index, run_dir in enumerate(run_dirs):
        if index:
            offset += json.loads((run_dirs[index - 1] / "state.json").read_text())["best_step"]
            rows = [row for row in rows if row["step"] <= offset]
            boundaries.append(offset)
        rows += [{**row, "step": row["step"] + offset} for row in read_history(run_dir)]
    return rows, boundaries


def plot_curve(history: list[dict], boundaries: list[float], out: Path) -> None:
    """Training loss and validation PSNR against steps, one PNG; a dashed line marks where
    each later training stage starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for stage, boundary in enumerate(boundaries, start=2):
        loss_axis.axvline(boundary, color="grey", linestyle="--", linewidth=1)
        loss_axis.annotate(
            f" stage {stage}",
            (boundary, 1),
            xycoords=("data", "axes fraction"),
            va="top",
            color="grey",
        )
    loss_axis.plot(steps, [row["loss"] for row in history], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (0-255 scale)", color="tab:blue")
    psnr_axis = loss_axis.twinx()
    psnr_axis.plot(
        steps, [row["val_psnr"] for row in history], color="tab:red", label="validation PSNR"
    )
    psnr_axis.set_ylabel("validation RGB PSNR (dB)", color="tab:red")
    fig.suptitle("EDSR x4 training: loss and held-out validation PSNR")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def before_after(upscaler: Upscaler, hr_path: Path, out: Path, box: tuple[int, int, int]) -> None:
    """Saves LR (pixel-replicated), bicubic, model and original crops side by side.

    Args:
        box: (top, left, size) of the HR crop; a multiple of the scale.
    """
    from PIL import Image, ImageDraw

    scale = upscaler.scale
    hr = data.modcrop(data.load_rgb(hr_path), scale)
    lr = data.bicubic_downscale(hr, scale)
    sr = np.clip(np.round(upscaler(lr)), 0, 255).astype(np.uint8)
    bicubic = data.bicubic_upscale(lr, scale)
    nearest = np.kron(lr, np.ones((scale, scale, 1), np.uint8))
    top, left, size = box
    panels = [
        ("input (x4 pixels)", nearest),
        ("bicubic", bicubic),
        ("EDSR x4", sr),
        ("original", hr),
    ]
    zoom = 2
    canvas = Image.new("RGB", (len(panels) * (size * zoom + 8), size * zoom + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels):
        crop = Image.fromarray(image[top : top + size, left : left + size])
        canvas.paste(
            crop.resize((size * zoom, size * zoom), Image.NEAREST), (i * (size * zoom + 8), 24)
        )
        draw.text((i * (size * zoom + 8) + 4, 6), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.research.model_card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="the exported .onnx model")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        help="the run folder (history.csv, config.json, state.json); repeat, in order, for a "
        "model trained in stages, each fine-tuning the previous stage's best.keras",
    )
    parser.add_argument("--bench", nargs="+", required=True, help="benchmark set folders")
    parser.add_argument("--peers", help="folder with the OpenCV peer models (.pb)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--curve", help="training-curve PNG to write")
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="also score the model's self-ensemble (8 flips/rotations averaged; standard LR only)",
    )
    parser.add_argument(
        "--previous",
        help="the card JSON of the model this one replaces: its figures are kept beside the new",
    )
    parser.add_argument(
        "--degradations",
        action="store_true",
        help="also score every degradation category (evaluate --degradations), as LR kinds of "
        "their own: the robust model's card",
    )
    parser.add_argument("--description", help="the card's one line for people choosing a model")
    parser.add_argument("--picture", help="before/after PNG to write")
    parser.add_argument(
        "--picture-image", help="HR image for the picture (default: first of the first set)"
    )
    parser.add_argument(
        "--picture-box", type=int, nargs=3, default=(0, 0, 128), metavar=("TOP", "LEFT", "SIZE")
    )
    return parser.parse_args(argv)


def _methods(model: Upscaler, peers: str | None, ensemble: bool) -> dict[str, Callable]:
    """The upscalers to score: the OpenCV peers found in `peers`, the model, its self-ensemble."""
    methods: dict[str, Callable] = {}
    for name, (file, algorithm) in PEERS.items():
        if peers and (Path(peers) / file).exists():
            methods[f"OpenCV {name}"] = opencv_peer(Path(peers) / file, algorithm, model.scale)
    methods[THIS_MODEL] = model
    if ensemble:
        methods[THIS_MODEL_ENSEMBLE] = lambda lr: self_ensemble(model, lr)
    return methods


def _training(run_dirs: list[Path]) -> dict:
    """The last stage's config and state, and every stage's, read from the run folders."""
    stages = [
        {name: json.loads((run / f"{name}.json").read_text()) for name in ("config", "state")}
        for run in run_dirs
    ]
    return {**stages[-1], "stages": stages}


def _add_categories(evaluation: dict, model: Upscaler, bench: list[Path]) -> None:
    """Each degradation category as an LR kind of the card (`GET /models` lists them), and
    prints the gain table (model minus bicubic per category and set)."""
    scored = evaluate_categories(model, bench, CATEGORIES)
    for row in scored["categories"]:
        kind = evaluation["results"].setdefault(row["category"], {"bicubic": {}, THIS_MODEL: {}})
        kind["bicubic"][row["set"]] = {"psnr": round(row["bicubic_psnr"], 3)}
        kind[THIS_MODEL][row["set"]] = {"psnr": round(row["psnr"], 3)}
    evaluation["lr_kinds"].update(CATEGORY_LABELS)
    print("\n### By degradation category\n")
    print(format_category_table(scored))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    model = load_upscaler(args.model)
    bench = [Path(b) for b in args.bench]
    # Read before anything is written: --previous may name the file --out overwrites.
    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    methods = _methods(model, args.peers, args.self_ensemble)
    results = benchmark(methods, bench, model.scale, standard_only=frozenset({THIS_MODEL_ENSEMBLE}))

    sidecar = Path(args.model).with_suffix(".json")
    card = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    card["evaluation"] = {
        "protocol": "Y (BT.601) PSNR / SSIM, x4, 4px border shaved, HR cropped to a multiple of 4,"
        " SR rounded to uint8",
        "lr_kinds": {
            "pil": "Pillow antialiased bicubic (standard)",
            "cv2": "cv2.resize INTER_CUBIC, no antialiasing (the OpenCV models' LR)",
        },
        "results": results,
        "published": PUBLISHED,
        "cpu": platform.processor() or platform.machine(),
    }
    if args.description:
        card["description"] = args.description
    if args.degradations:
        _add_categories(card["evaluation"], model, bench)
    previous_rows = _previous_rows(previous) if previous else None
    if previous:
        card["previous_model"] = {
            "results": previous_rows,
            "metadata": {k: v for k, v in previous.items() if isinstance(v, str)},
            "training": previous.get("training"),
        }
    if args.run:
        card["training"] = _training([Path(run) for run in args.run])
        if args.curve:
            plot_curve(*chain_histories([Path(run) for run in args.run]), Path(args.curve))
    if args.picture:
        image = (
            Path(args.picture_image)
            if args.picture_image
            else min(s.hr_path for s in data.discover_sources([bench[0]], model.scale))
        )
        before_after(model, image, Path(args.picture), tuple(args.picture_box))
    Path(args.out).write_text(json.dumps(card, indent=2) + "\n")

    sets = [b.name for b in bench]
    for kind, title in (
        ("pil", "standard LR (antialiased bicubic)"),
        ("cv2", "OpenCV LR (INTER_CUBIC)"),
    ):
        print(f"\n### {title}\n")
        print(markdown_table(results, kind, sets, previous_rows))
    seconds = {s: results["pil"][THIS_MODEL][s]["seconds_per_image"] for s in sets}
    print("\nEDSR CPU seconds per image:", json.dumps(seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
