"""Command line: `python -m training {train,evaluate,export} ...`; `--help` on each for flags."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import CONFIG_FILE, TrainConfig
from training.degradations import CATEGORIES, MIXTURES


def _add_train(sub) -> None:
    defaults = TrainConfig(data=[], out="")
    p = sub.add_parser(
        "train",
        help="train (or resume) an EDSR model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="training images: a folder (searched recursively; DIV2K layout "
        "recognised) or a file; repeat for several (not needed with --resume)",
    )
    p.add_argument(
        "--val-data",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="validation images: folders or files, several after one flag or the flag "
        "repeated; excluded from training",
    )
    p.add_argument(
        "--val-holdout",
        type=int,
        default=defaults.val_holdout,
        help="without --val-data: hold out this many training images for validation",
    )
    p.add_argument(
        "--val-crop",
        type=int,
        default=defaults.val_crop,
        help="validate on centred HR crops of this size (0 = whole images)",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"total training steps (default: {defaults.steps}; with --resume, the run's own)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="steps between validations (and checkpoints)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--patch-size", type=int, default=defaults.patch_size, help="HR patch side")
    p.add_argument(
        "--degradation",
        choices=sorted(MIXTURES),
        default=defaults.degradation,
        help="how each training patch's LR is made: the textbook antialiased bicubic, or a "
        "mixture drawn afresh per patch (see training/degradations.py)",
    )
    p.add_argument("--scale", type=int, default=defaults.scale, choices=(2, 3, 4))
    p.add_argument("--filters", type=int, default=defaults.filters)
    p.add_argument("--blocks", type=int, default=defaults.blocks)
    p.add_argument("--res-scale", type=float, default=defaults.res_scale)
    p.add_argument("--lr", type=float, default=defaults.lr, help="initial learning rate")
    p.add_argument("--lr-schedule", choices=("piecewise", "cosine"), default=defaults.lr_schedule)
    p.add_argument(
        "--lr-boundaries",
        type=int,
        nargs="*",
        default=defaults.lr_boundaries,
        help="piecewise schedule: steps at which the rate changes",
    )
    p.add_argument(
        "--lr-values",
        type=float,
        nargs="*",
        default=None,
        help="piecewise schedule: the rates (one more than boundaries); default: --lr "
        "halved at each boundary",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="stop after this many validations without gain (0 = never)",
    )
    p.add_argument(
        "--init-from",
        default="",
        metavar="MODEL",
        help="start from the weights of this .keras checkpoint or fp32 .onnx export (e.g. "
        "models/edsr_x4.onnx) to fine-tune; the architecture flags must match it",
    )
    p.add_argument(
        "--mixed-precision",
        choices=("off", "float16", "bfloat16"),
        default=defaults.mixed_precision,
    )
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default=defaults.jit_compile)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--workers", type=int, default=defaults.workers, help="data-loading worker threads"
    )
    p.add_argument(
        "--verbose",
        type=int,
        default=defaults.verbose,
        choices=(0, 1, 2),
        help="Keras fit verbosity: 1 = progress bar, 2 = one line per evaluation",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest state (with --steps as the "
        "new total); other flags are taken from the run's config.json",
    )


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model by the standard SR protocol",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Optional here so that a model written after the --data folders, which argparse would take
    # as one more folder, can be found there (see `_model_after_data`).
    p.add_argument("model", nargs="?", help="a .keras or .onnx model")
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="benchmark sets: one folder each (Set5, Set14, BSD100, ...)",
    )
    p.add_argument("--scale", type=int, default=None, help="default: read from the model")
    p.add_argument(
        "--lr-kind",
        choices=("pil", "cv2"),
        default="pil",
        help="how LR is made: Pillow antialiased bicubic (standard; a folder's own LR files, "
        "as DIV2K and SelfExSR-style *_SRF_4_LR.png sets ship them, are used instead) or cv2 "
        "INTER_CUBIC",
    )
    p.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the 8 flips/rotations (the paper's '+' figures)",
    )
    p.add_argument(
        "--degradations",
        nargs="*",
        choices=sorted(CATEGORIES),
        default=None,
        metavar="CATEGORY",
        help="score the model minus bicubic under these LR degradations instead (all of them "
        f"when none is named): {', '.join(CATEGORIES)}",
    )
    p.add_argument(
        "--tile-size", type=int, default=256, help="LR tile side for large images (bounded memory)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a .keras checkpoint to ONNX, verified",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .keras file (e.g. RUN_DIR/best.keras)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest allowed |onnx - keras| on the 0-255 scale",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write a verified half-precision copy, <stem>_fp16.onnx, beside --out "
        "(float32 input/output kept; the service runs it on CUDA)",
    )


MODEL_SUFFIXES = (".keras", ".onnx")


def _saved_steps(run_dir: str) -> int:
    """The step total a run folder was last given (the default when there is no run yet, which
    `train` then reports as nothing to resume)."""
    config_path = Path(run_dir) / CONFIG_FILE
    if not config_path.is_file():
        return TrainConfig.steps
    return TrainConfig.load(Path(run_dir)).steps


def _model_after_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Moves a model given after `--data DIR ...` (where argparse files it as a folder) to
    `args.model`, or exits with a usage error when no model was given at all."""
    if args.model is None and args.data and args.data[-1].endswith(MODEL_SUFFIXES):
        args.model = args.data.pop()
    if args.model is None:
        parser.error("evaluate: give the model to score (a .keras or .onnx file)")
    if not args.data:
        parser.error("evaluate: --data needs at least one benchmark folder")


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "train":
        from training.train import train

        # A resumed run reads its data folders from its config.json, so only a new run needs them.
        if not args.data and not args.resume:
            parser.error("train: --data is required (except with --resume)")

        if args.steps is None:
            args.steps = _saved_steps(args.out) if args.resume else TrainConfig.steps
        fields = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
        fields["data"] = fields["data"] or []
        try:
            state = train(TrainConfig(**fields), resume=args.resume)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            # Mistakes in the flags or the folders: a sentence, not a traceback.
            print(f"train failed: {error}", file=sys.stderr)
            return 2
        print(
            json.dumps(
                {
                    "step": state.step,
                    "best_val_psnr": state.best_val_psnr,
                    "best_step": state.best_step,
                    "stopped_early": state.stopped_early,
                }
            )
        )
        return 0
    if args.command == "evaluate":
        from training.evaluate import evaluate_sets, format_table, load_upscaler

        _model_after_data(parser, args)

        upscaler = load_upscaler(args.model, tile_size=args.tile_size)
        if args.degradations is not None:
            from training.evaluate import evaluate_categories, format_category_table

            results = evaluate_categories(upscaler, args.data, args.degradations or CATEGORIES)
            print(json.dumps(results, indent=2) if args.json else format_category_table(results))
            return 0
        results = evaluate_sets(
            upscaler,
            args.data,
            scale=args.scale,
            lr_kind=args.lr_kind,
            self_ensemble=args.self_ensemble,
        )
        print(json.dumps(results, indent=2) if args.json else format_table(results))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
