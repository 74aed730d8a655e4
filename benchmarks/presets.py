"""How much each run measures: `--quick` (under 3 minutes on 2 cores) or the full set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Sizes, repetitions and budgets of one harness run.

    Attributes:
        name: `quick` or `full`.
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


QUICK = Preset(
    name="quick",
    repeats=2,
    model_input=128,
    tiling_input=512,
    tuning_input=96,
    tile_sweep=((320, (128, 192, 256, 384)),),
    http_sizes=(64, 256),
    http_concurrency=(1, 4, 16),
    http_min_requests=2,
    http_cell_budget_s=20.0,
    encode_input=256,
)

FULL = Preset(
    name="full",
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
