"""One-factor-at-a-time training ablation: which of data, schedule, patch size and precision
moves the model, measured with the same steps and the same evaluation for every variant.

Every variant is the `base` run with one thing changed (`AblationPlan.variants`):

| variant | change from `base` |
|---|---|
| `base` | `--data` + `--extra-data`, cosine decay to zero, 192-pixel HR patches, float32 |
| `data-no-extra` | without `--extra-data` (the 291-image set alone, when that is `--data`) |
| `piecewise` | constant learning rate, halved at 1/2 and again at 3/4 of the run |
| `patch-large` | HR patches of `--large-patch-size` (LR 64 at x4, against base's LR 48) |
| `bf16` | mixed bfloat16 (float32 weights and output) |

The base run takes every `train` flag (`BASE` lists where its defaults differ from `train`'s).
Each variant trains through `python -m training train` in its own process (so nothing global,
such as the Keras precision policy or the backend, leaks from one to the next) into
`OUT/<variant>`; its `best.keras`, chosen on the validation images only, is then scored by
`python -m training evaluate` on the `--bench` sets. Without `--val-data`, `--val-holdout` images
of `--data` are held out for every variant alike, so no two variants are chosen on different
images.

A rerun with the same `--out` resumes unfinished variants and skips finished ones, so the
ablation can be spread over several sessions; a run found there must have been started with its
variant's settings, or the ablation stops (a table must never compare runs trained under
different flags). `--parallel N` trains N variants at once, which a GPU has room for. Without
`--bench` the variants only train; a rerun with `--bench` finds them finished and scores them.
Results go to `OUT/ablation.json`, and a markdown table is printed: PSNR, the difference from
`base`, and the images each variant trained on (a larger patch skips images smaller than it).

Usage (from the repository root):
    python -m training.research.ablation --data ../shared/data/train \
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from training.config import CONFIG_FILE, TrainConfig, add_flags, to_flags

#: Where the ablation's base run differs from `train`'s defaults.
BASE = {
    "patch_size": 192,
    "lr": 2e-4,
    "seed": 1,
    "lr_schedule": "cosine",
    "patience": 0,
    "verbose": 2,
}
#: TrainConfig fields that say how a run was carried out rather than what it trained.
NOT_COMPARED = ("out", "workers", "verbose", "jit_compile", "backend", "train_images", "val_images")


@dataclass(frozen=True)
class AblationPlan:
    """The base run (`out` the ablation's folder, `data` including `extra_data`) and what the
    variants change in it."""

    base: TrainConfig
    extra_data: tuple[str, ...] = ()
    large_patch_size: int = 256

    @property
    def out(self) -> Path:
        return Path(self.base.out)

    def variants(self) -> dict[str, dict]:
        """Each variant's one change to the base run, as TrainConfig field overrides."""
        steps = self.base.steps
        return {
            "base": {},
            "data-no-extra": {"data": [d for d in self.base.data if d not in self.extra_data]},
            "piecewise": {
                "lr_schedule": "piecewise",
                "lr_boundaries": [steps // 2, steps * 3 // 4],
            },
            "patch-large": {"patch_size": self.large_patch_size},
            "bf16": {"mixed_precision": "bfloat16"},
        }

    def config(self, variant: str) -> TrainConfig:
        """The TrainConfig of `variant`'s run, in `OUT/<variant>`."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        overrides = self.variants()[variant]
        return dataclasses.replace(self.base, out=str(self.out / variant), **overrides)


VARIANTS = tuple(AblationPlan(TrainConfig()).variants())


def _comparable(config: TrainConfig) -> dict:
    """Settings as compared between runs: paths by file or folder name only, so runs trained on
    another machine's copy of the data can be scored here; no piecewise rates for cosine runs."""
    comparable = dataclasses.asdict(config)
    for name in NOT_COMPARED:
        comparable.pop(name)
    for name in ("data", "val_data"):
        comparable[name] = [Path(path).name for path in comparable[name]]
    if comparable["lr_schedule"] != "piecewise":
        del comparable["lr_boundaries"], comparable["lr_values"]
    return comparable


def check_existing_run(plan: AblationPlan, variant: str) -> None:
    """Refuses a run folder whose run was started with other settings than `variant`'s now.

    Raises:
        ValueError: Naming each setting that differs.
    """
    run_dir = plan.out / variant
    if not (run_dir / CONFIG_FILE).exists():
        if (run_dir / "state.json").exists():
            # Weights and state brought back from another machine without their config.
            print(f"note: {run_dir} has no config.json; its settings are unchecked")
        return
    recorded = _comparable(TrainConfig.load(run_dir))
    expected = _comparable(plan.config(variant))
    differences = [
        f"{name}: run has {recorded[name]!r}, this ablation {expected[name]!r}"
        for name in expected
        if recorded[name] != expected[name]
    ]
    if differences:
        raise ValueError(
            f"{run_dir} was trained with other settings ({'; '.join(differences)}); "
            "use another --out, or the flags it was started with"
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
    steps = plan.base.steps
    if state is not None and state["step"] >= steps:
        return None
    if state is None:
        args = to_flags(plan.config(variant))
    else:
        args = [f"--out={run_dir}", "--resume", f"--steps={steps}", "--verbose=2"]
    return [sys.executable, "-m", "training", "train", *args]


def train_variants(plan: AblationPlan, variants: Sequence[str], parallel: int = 1) -> dict:
    """Trains the unfinished variants, up to `parallel` at a time (one EDSR baseline run leaves
    much of a GPU idle; side-by-side runs write to `OUT/<variant>.log`, not the terminal), and
    returns each one's state.

    Raises:
        subprocess.CalledProcessError: A variant's training failed (the others still finish).
    """
    pending = {v: command for v in variants if (command := train_command(plan, v)) is not None}

    def run(variant: str) -> int:
        print("$", shlex.join(pending[variant]), flush=True)
        if parallel <= 1:
            return subprocess.run(pending[variant]).returncode
        with open(plan.out / f"{variant}.log", "a") as log:
            return subprocess.run(pending[variant], stdout=log, stderr=log).returncode

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        codes = dict(zip(pending, pool.map(run, pending), strict=True))
    for variant, code in codes.items():
        if code:
            print(f"variant {variant} failed (exit {code})", file=sys.stderr)
            raise subprocess.CalledProcessError(code, pending[variant])
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


def _plan(argv: list[str] | None) -> tuple[AblationPlan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m training.research.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, required=("data", "out", "steps"), defaults=BASE)
    parser.add_argument("--extra-data", nargs="+", default=[], help="data the base run adds")
    parser.add_argument("--large-patch-size", type=int, default=256, help="patch-large's side")
    parser.add_argument(
        "--bench",
        nargs="+",
        default=[],
        help="benchmark set folders; without them the variants only train (score them later, "
        "on another machine if need be, by rerunning with --bench)",
    )
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
    fields = {item.name for item in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{**BASE, **{k: v for k, v in vars(args).items() if k in fields}})
    if not base.val_data:
        from training import data

        sources = data.discover_sources(base.data, base.scale)
        _, held = data.hold_out(sources, count=base.val_holdout)
        base.val_data = [str(source.hr_path) for source in held]
        print(f"validating every variant on {len(held)} images held out of --data")
    base.data = [*base.data, *args.extra_data]
    return AblationPlan(base, tuple(args.extra_data), args.large_patch_size), args


def main(argv: list[str] | None = None) -> int:
    plan, args = _plan(argv)
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        states = train_variants(plan, args.variants, args.parallel)
    except ValueError as error:
        print(f"ablation stopped: {error}", file=sys.stderr)
        return 2
    if not args.bench:
        print(json.dumps(states, indent=2))
        return 0
    results_file = plan.out / "ablation.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for variant in args.variants:
        config_file = plan.out / variant / CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        results[variant] = {
            "command": "python -m training train " + shlex.join(to_flags(plan.config(variant))),
            "train_images": config.get("train_images"),
            "state": states[variant],
            "bench": evaluate_variant(plan, variant, args.bench),
        }
        # Written after every variant, so an interrupted ablation keeps what it measured.
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    ordered = {variant: results[variant] for variant in VARIANTS if variant in results}
    print(markdown_table(ordered, [Path(folder).name for folder in args.bench]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
