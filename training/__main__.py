"""Command line: `python -m training {train,evaluate,export} ...`; `--help` on each for flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import CONFIG_FILE, TrainConfig, add_flags
from training.degradations import CATEGORIES

MODEL_SUFFIXES = (".keras", ".onnx")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) an EDSR model")
    add_flags(train, required=("out",))
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest state (with --steps as the new total); "
        "other flags are taken from the run's config.json",
    )
    defaults = argparse.ArgumentDefaultsHelpFormatter
    evaluate = sub.add_parser(
        "evaluate", help="score a model by the standard SR protocol", formatter_class=defaults
    )
    _add_evaluate_flags(evaluate)
    export = sub.add_parser(
        "export", help="export a .keras checkpoint to ONNX, verified", formatter_class=defaults
    )
    export.add_argument("checkpoint", help="a .keras file (e.g. RUN_DIR/best.keras)")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest allowed |onnx - keras| on the 0-255 scale",
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="also write a verified half-precision copy, <stem>_fp16.onnx, beside --out "
        "(float32 input/output kept; the service runs it on CUDA)",
    )
    return parser


def _add_evaluate_flags(evaluate: argparse.ArgumentParser) -> None:
    # Optional here so that a model written after the --data folders, which argparse would take
    # as one more folder, can be found there (see `_model_after_data`).
    evaluate.add_argument("model", nargs="?", help="a .keras or .onnx model")
    evaluate.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="benchmark sets: one folder each (Set5, Set14, BSD100, ...)",
    )
    evaluate.add_argument("--scale", type=int, default=None, help="default: read from the model")
    evaluate.add_argument(
        "--lr-kind",
        choices=("pil", "cv2"),
        default="pil",
        help="how LR is made: Pillow antialiased bicubic (standard; a folder's own LR files, "
        "as DIV2K and SelfExSR-style *_SRF_4_LR.png sets ship them, are used instead) or cv2 "
        "INTER_CUBIC",
    )
    evaluate.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the 8 flips/rotations (the paper's '+' figures)",
    )
    evaluate.add_argument(
        "--degradations",
        nargs="*",
        choices=sorted(CATEGORIES),
        default=None,
        metavar="CATEGORY",
        help="score the model minus bicubic under these LR degradations instead (all of them "
        f"when none is named): {', '.join(CATEGORIES)}",
    )
    evaluate.add_argument(
        "--tile-size", type=int, default=256, help="LR tile side for large images (bounded memory)"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from training.train import train

    given = {name: value for name, value in vars(args).items() if name not in ("command", "resume")}
    # A resumed run reads its data folders from its config.json, so only a new run needs them.
    if not given.get("data") and not args.resume:
        parser.error("train: --data is required (except with --resume)")
    run_dir = Path(given["out"])
    if args.resume and "steps" not in given and (run_dir / CONFIG_FILE).is_file():
        given["steps"] = TrainConfig.load(run_dir).steps  # the run keeps its length
    try:
        state = train(TrainConfig(**given), resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        # Mistakes in the flags or the folders: a sentence, not a traceback.
        print(f"train failed: {error}", file=sys.stderr)
        return 2
    summary = ("step", "best_val_psnr", "best_step", "stopped_early")
    print(json.dumps({name: getattr(state, name) for name in summary}))
    return 0


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from training import evaluate

    # argparse files a model given after `--data DIR ...` as one more folder: take it back.
    if args.model is None and args.data and args.data[-1].endswith(MODEL_SUFFIXES):
        args.model = args.data.pop()
    if args.model is None:
        parser.error("evaluate: give the model to score (a .keras or .onnx file)")
    if not args.data:
        parser.error("evaluate: --data needs at least one benchmark folder")
    upscaler = evaluate.load_upscaler(args.model, tile_size=args.tile_size)
    if args.degradations is not None:
        categories = args.degradations or CATEGORIES
        results = evaluate.evaluate_categories(upscaler, args.data, categories)
        table = evaluate.format_category_table
    else:
        results = evaluate.evaluate_sets(
            upscaler,
            args.data,
            scale=args.scale,
            lr_kind=args.lr_kind,
            self_ensemble=args.self_ensemble,
        )
        table = evaluate.format_table
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_onnx

    if not Path(args.checkpoint).is_file():
        print(f"export failed: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 1
    try:
        report = export_onnx(
            args.checkpoint, args.out, opset=args.opset, tolerance=args.tolerance, fp16=args.fp16
        )
    except ExportError as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "train":
        return _train(parser, args)
    if args.command == "evaluate":
        return _evaluate(parser, args)
    return _export(args)


if __name__ == "__main__":
    sys.exit(main())
