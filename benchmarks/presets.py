"""How much each run measures: `--quick` (about two minutes on 2 cores: what a user runs first)
or the full set, which carries the studies a first look does not need."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Sizes, repetitions and budgets of one harness run.

    Attributes:
        name: `quick` or `full`.
        sections: The sections run unless `--sections` names others.
        model_parallel: Whether the model section also times 2 parallel calls against 1 (per
            engine and OpenVINO hint): a study for choosing settings, ~20 s on 2 cores.
        repeats: Timed repetitions of each measurement (after one untimed warm-up).
        model_input: Side of the LR input of the model section (one whole-image call).
        tiling_input: Side of the LR input of the tiling section.
        tuning_input: Side of the LR input for the session-option sweep.
        tile_sweep: (LR input side, tile sides to try on it) pairs of the tile-size sweep.
        http_sizes: LR input sides sent to the real service.
        http_concurrency: Client concurrencies.
        http_min_requests: Requests per cell at least (more when the concurrency is higher).
        http_cell_budget_s: A cell whose estimated duration exceeds this is skipped, and the
            report says so with its estimate.
        encode_input: Side of the LR input whose upscaled output the encoders get.
    """

    name: str
    sections: tuple[str, ...]
    model_parallel: bool
    repeats: int
    model_input: int
    tiling_input: int
    tuning_input: int
    tile_sweep: tuple[tuple[int, tuple[int, ...]], ...]
    http_sizes: tuple[int, ...]
    http_concurrency: tuple[int, ...]
    http_min_requests: int
    http_cell_budget_s: float
    encode_input: int


#: Every section, in the order they run (`python -m benchmarks --sections` takes a subset).
SECTIONS = ("model", "tiling", "tuning", "encode", "memory", "http", "startup", "estimate", "gpu")

#: What a user sees first, under about two minutes on a busy 2-core CPU (measured: see
#: docs/benchmarks.md): each engine's speed, the encoders, and the real service over HTTP (and
#: the GPU where there is one). The full run adds the tiling, tuning, memory, start-up and
#: estimate sections and the parallel-call study, which took over 200 s more on the same machine.
QUICK = Preset(
    name="quick",
    sections=("model", "encode", "http", "gpu"),
    model_parallel=False,
    repeats=2,
    model_input=128,
    tiling_input=512,
    tuning_input=96,
    tile_sweep=((320, (128, 192, 256, 384)),),
    http_sizes=(64, 256),
    # Concurrency 1 and 4 give the throughput target; 16 (the queue overflowing) is the full run's.
    http_concurrency=(1, 4),
    http_min_requests=2,
    http_cell_budget_s=20.0,
    encode_input=256,
)

FULL = Preset(
    name="full",
    sections=SECTIONS,
    model_parallel=True,
    repeats=3,
    model_input=256,
    tiling_input=512,
    tuning_input=160,
    # Tiles under 128 are measured on the smaller input only: on 512 pixels they took 2-4 times
    # as long as 256-pixel tiles in a first run.
    tile_sweep=((256, (64, 96, 128, 192, 256, 384)), (512, (128, 192, 256, 384, 512))),
    http_sizes=(64, 256, 1024),
    http_concurrency=(1, 4, 16),
    http_min_requests=2,
    http_cell_budget_s=60.0,
    encode_input=512,
)

#: A preset small enough for the test suite's smoke run on a tiny model.
SMOKE = Preset(
    name="smoke",
    sections=SECTIONS,
    model_parallel=True,
    repeats=1,
    model_input=16,
    tiling_input=40,
    tuning_input=16,
    tile_sweep=((40, (16, 24)),),
    http_sizes=(8, 24),
    http_concurrency=(1, 2),
    http_min_requests=2,
    http_cell_budget_s=10.0,
    encode_input=24,
)

PRESETS = {preset.name: preset for preset in (QUICK, FULL, SMOKE)}
