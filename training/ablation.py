"""One-factor-at-a-time training ablation: which of data, schedule, patch size and precision
moves the model, measured with the same steps and the same evaluation for every variant.

Every variant is the `base` run with one thing changed:

| variant | change from `base` |
|---|---|
| `base` | `--data` + `--extra-data`, cosine decay to zero, `--patch-size` HR patches, float32 |
| `data-no-extra` | without `--extra-data` (the 291-image set alone, when that is `--data`) |
| `piecewise` | constant learning rate, halved at 1/2 and again at 3/4 of the run |
| `patch-large` | HR patches of `--large-patch-size` (LR 64 at x4, against base's LR 48) |
| `bf16` | mixed bfloat16 (float32 weights and output) |

Each variant trains through `python -m training train` in its own process (so nothing global,
such as the Keras precision policy or the backend, leaks from one to the next) into
`OUT/<variant>`, then its `best.keras` is scored by `python -m training evaluate` on the
benchmark sets. Checkpoints are chosen on the validation images only, never on the benchmarks.
A rerun with the same `--out` resumes unfinished variants and skips finished ones, so the
ablation can be spread over several sessions on a GPU machine (a run found there must have been
started with this variant's settings, or the ablation stops: a table must never compare runs
trained under different flags); `--parallel N` trains N variants
at once, which a GPU has room for. Without `--bench` the variants only train (on a GPU machine
that lacks the benchmark sets, say); a rerun with `--bench` finds them finished and scores them.
Results go to `OUT/ablation.json` and a markdown table (PSNR and the difference from `base`,
and the images each variant trained on: a larger patch skips images smaller than it, which the
table must show beside its figures) is printed. Without `--val-data`, 10 images of `--data` are
held out for every variant alike (each variant picking its own would compare checkpoints chosen
on different images).

Usage (from the repository root):
    python -m training.ablation --data ../shared/data/train \
        --extra-data ../shared/data/train-extra --val-data HELD_OUT_FILES... \
        --bench ../shared/data/bench/Set5 ../shared/data/bench/Set14 ../shared/data/bench/BSD100 \
        --out runs/ablation --steps 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("base", "data-no-extra", "piecewise", "patch-large", "bf16")


@dataclass(frozen=True)
class AblationPlan:
    """What every variant shares; `train_args` derives each variant's command line from it."""

    data: tuple[str, ...]
    extra_data: tuple[str, ...]
    val_data: tuple[str, ...]
    out: Path
    steps: int
    eval_every: int
    batch_size: int = 16
    patch_size: int = 192
    large_patch_size: int = 256
    lr: float = 2e-4
    filters: int = 64
    blocks: int = 16
    seed: int = 1

    def settings(self, variant: str) -> dict:
        """The training settings of `variant`, by `TrainConfig` field name: `base`'s, with the
        one change the variant names."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        piecewise = variant == "piecewise"
        return {
            "data": self.data if variant == "data-no-extra" else self.data + self.extra_data,
            "val_data": self.val_data,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "batch_size": self.batch_size,
            "patch_size": self.large_patch_size if variant == "patch-large" else self.patch_size,
            "lr": self.lr,
            "filters": self.filters,
            "blocks": self.blocks,
            "seed": self.seed,
            "lr_schedule": "piecewise" if piecewise else "cosine",
            "lr_boundaries": [self.steps // 2, self.steps * 3 // 4] if piecewise else None,
            "mixed_precision": "bfloat16" if variant == "bf16" else "off",
        }

    def train_args(self, variant: str) -> list[str]:
        """The `python -m training train` arguments of a new run of `variant`."""
        settings = self.settings(variant)
        args = [f"--data={folder}" for folder in settings["data"]]
        args += [f"--val-data={item}" for item in settings["val_data"]]
        args += [f"--out={self.out / variant}"]
        args += [
            f"--{name.replace('_', '-')}={settings[name]}"
            for name in (
                "steps", "eval_every", "batch_size", "patch_size", "lr", "filters", "blocks", "seed"
            )
        ]  # fmt: skip
        args += ["--patience=0", "--verbose=2", f"--lr-schedule={settings['lr_schedule']}"]
        if settings["lr_boundaries"]:
            args += ["--lr-boundaries", *(str(step) for step in settings["lr_boundaries"])]
        args.append(f"--mixed-precision={settings['mixed_precision']}")
        return args


def _comparable(settings: dict) -> dict:
    """Settings as compared between runs: paths by file or folder name only, so runs trained on
    another machine's copy of the data can be scored here; no boundaries for cosine runs."""
    comparable = {name: settings.get(name) for name in _COMPARED}
    comparable["data"] = [Path(folder).name for folder in settings.get("data") or ()]
    comparable["val_data"] = [Path(item).name for item in settings.get("val_data") or ()]
    if comparable["lr_schedule"] != "piecewise":
        comparable.pop("lr_boundaries")
    return comparable


#: TrainConfig fields that define an experiment, besides the data.
_COMPARED = (
    "steps",
    "eval_every",
    "batch_size",
    "patch_size",
    "lr",
    "filters",
    "blocks",
    "seed",
    "lr_schedule",
    "lr_boundaries",
    "mixed_precision",
)


def check_existing_run(plan: AblationPlan, variant: str) -> None:
    """Refuses a run folder whose run was started with other settings than `variant`'s now.

    Raises:
        ValueError: Naming each setting that differs.
    """
    config_file = plan.out / variant / "config.json"
    if not config_file.exists():
        if (plan.out / variant / "state.json").exists():
            # Weights and state brought back from another machine without their config.
            print(f"note: {plan.out / variant} has no config.json; its settings are unchecked")
        return
    recorded = _comparable(json.loads(config_file.read_text()))
    expected = _comparable(plan.settings(variant))
    differences = [
        f"{name}: run has {recorded[name]!r}, this ablation {expected[name]!r}"
        for name in expected
        if recorded[name] != expected[name]
    ]
    if differences:
        raise ValueError(
            f"{plan.out / variant} was trained with other settings ("
            + "; ".join(differences)
            + "); use another --out, or the flags it was started with"
        )


def _run_state(run_dir: Path) -> dict | None:
    state_file = run_dir / "state.json"
    return json.loads(state_file.read_text()) if state_file.exists() else None


def train_command(plan: AblationPlan, variant: str) -> list[str] | None:
    """The command that trains (or resumes) `variant`, or None when it has finished.

    Raises:
        ValueError: When `OUT/<variant>` holds a run started with other settings.
    """
    run_dir = plan.out / variant
    check_existing_run(plan, variant)
    state = _run_state(run_dir)
    if state is not None and state["step"] >= plan.steps:
        return None
    if state is None:
        args = plan.train_args(variant)
    else:
        args = [f"--out={run_dir}", "--resume", f"--steps={plan.steps}", "--verbose=2"]
    return [sys.executable, "-m", "training", "train", *args]


def train_variants(plan: AblationPlan, variants: Sequence[str], parallel: int = 1) -> dict:
    """Trains the unfinished variants, up to `parallel` at a time, and returns each one's state.

    One EDSR baseline run leaves much of a GPU idle: two runs side by side on one H100 took 11
    and 9 ms a step against 7.5 ms alone, 1.5 times the steps per second in all. Side-by-side
    runs write their output to `OUT/<variant>.log` instead of the terminal.

    Raises:
        subprocess.CalledProcessError: A variant's training failed (the others still finish).
    """
    pending = [(v, command) for v in variants if (command := train_command(plan, v)) is not None]
    running: list[tuple[str, subprocess.Popen, object]] = []
    failed: list[tuple[str, list[str], int]] = []

    def reap(entry) -> None:
        variant, process, log = entry
        if process.wait() != 0:
            failed.append((variant, process.args, process.returncode))
        if log is not None:
            log.close()

    while pending or running:
        while pending and len(running) < max(1, parallel):
            variant, command = pending.pop(0)
            print("$", shlex.join(command), flush=True)
            log = open(plan.out / f"{variant}.log", "a") if parallel > 1 else None  # noqa: SIM115
            running.append((variant, subprocess.Popen(command, stdout=log, stderr=log), log))
        # Refill a slot as soon as any run ends, not only the oldest.
        while not (done := [entry for entry in running if entry[1].poll() is not None]):
            time.sleep(0.5)
        for entry in done:
            running.remove(entry)
            reap(entry)
    if failed:
        variant, command, code = failed[0]
        print(f"variant {variant} failed (exit {code})", file=sys.stderr)
        raise subprocess.CalledProcessError(code, command)
    return {variant: _run_state(plan.out / variant) or {} for variant in variants}


def evaluate_variant(plan: AblationPlan, variant: str, bench: Sequence[str]) -> dict:
    """Scores a variant's best checkpoint on the benchmark sets: {set: {"psnr", "ssim"}}."""
    checkpoint = plan.out / variant / "best.keras"
    command = [sys.executable, "-m", "training", "evaluate", str(checkpoint), "--json"]
    command += ["--data", *bench]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(finished.stdout)
    return {
        row["set"]: {"psnr": round(row["psnr"], 3), "ssim": round(row["ssim"], 4)}
        for row in report["sets"]
    }


def markdown_table(results: dict, sets: Sequence[str]) -> str:
    """Y-PSNR per set and its difference from `base`, one row per variant."""
    lines = [
        "| variant | training images | best step | validation PSNR | " + " | ".join(sets) + " |",
        "|---|---|---|---|" + "---|" * len(sets),
    ]
    base = results.get("base", {}).get("bench", {})
    for variant, result in results.items():
        cells = []
        for name in sets:
            if name not in result.get("bench", {}):
                cells.append("–")  # scored on other sets in an earlier call
                continue
            psnr = result["bench"][name]["psnr"]
            delta = (
                ""
                if variant == "base" or name not in base
                else f" ({psnr - base[name]['psnr']:+.2f})"
            )
            cells.append(f"{psnr:.2f}{delta}")
        state = result["state"]
        lines.append(
            f"| {variant} | {result.get('train_images', '–')} | {state.get('best_step', '–')} | "
            f"{state.get('best_val_psnr', float('nan')):.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", nargs="+", required=True, help="the base training set")
    parser.add_argument("--extra-data", nargs="+", default=[], help="data the base run adds")
    parser.add_argument(
        "--val-data",
        nargs="+",
        default=[],
        help="held-out validation images (default: 10 of --data, the same for every variant)",
    )
    parser.add_argument(
        "--bench",
        nargs="+",
        default=[],
        help="benchmark set folders; without them the variants only train (score them later, "
        "on another machine if need be, by rerunning with --bench)",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the variants' runs")
    parser.add_argument("--steps", type=int, required=True, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=192, help="base HR patch side")
    parser.add_argument("--large-patch-size", type=int, default=256, help="patch-large's side")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="a subset to run"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="variants trained at once (they share the GPU; output goes to OUT/<variant>.log)",
    )
    args = parser.parse_args(argv)
    # Every plan field has a flag of the same name; list-valued flags become tuples.
    plan = AblationPlan(
        **{
            name: tuple(value) if isinstance(value, list) else value
            for name, value in vars(args).items()
            if name in {field.name for field in dataclasses.fields(AblationPlan)}
        }
    )
    if not plan.val_data:
        plan = dataclasses.replace(plan, val_data=_shared_hold_out(plan.data))
        print(f"validating every variant on {len(plan.val_data)} images held out of --data")
    plan.out.mkdir(parents=True, exist_ok=True)
    results_file = plan.out / "ablation.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    try:
        states = train_variants(plan, args.variants, args.parallel)
    except ValueError as error:
        print(f"ablation stopped: {error}", file=sys.stderr)
        return 2
    if not args.bench:
        print(json.dumps(states, indent=2))
        return 0
    for variant in args.variants:
        config_file = plan.out / variant / "config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        results[variant] = {
            "command": "python -m training train " + shlex.join(plan.train_args(variant)),
            "train_images": config.get("train_images"),
            "state": states[variant],
            "bench": evaluate_variant(plan, variant, args.bench),
        }
        # Written after every variant, so an interrupted ablation keeps what it measured.
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    ordered = {variant: results[variant] for variant in VARIANTS if variant in results}
    print(markdown_table(ordered, [Path(folder).name for folder in args.bench]))
    return 0


def _shared_hold_out(data_paths: Sequence[str]) -> tuple[str, ...]:
    """The validation images `train` would hold out of `data_paths` by default, as files."""
    from training import data

    _, held = data.hold_out(data.discover_sources(data_paths, scale=4), count=10)
    return tuple(str(source.hr_path) for source in held)


if __name__ == "__main__":
    raise SystemExit(main())
