"""CPU tuning section: the measurements behind the defaults in `service/config.py`.

* Session options, each varied alone from the service's settings, on one whole-image call:
  intra-op threads, inter-op threads, graph optimisation level, the CPU memory arena.
* Tile size: the whole tiled upscale of one image for each tile side, in the service's tile
  mode, so per-call overhead (small tiles) and overlap work (many seams) are both in the figure.
* Concurrency: the same images upscaled one after the other, and by two threads sharing the
  session at once (what `MAX_CONCURRENCY=2` would do), as images per second.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.measure import megapixels_per_second, time_call
from benchmarks.tiling_section import pixel_work
from service.core.tiling import upscale_tiled

SESSION_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("intra_op_threads=1", {"intra_op_threads": 1}),
    ("intra_op_threads=2", {"intra_op_threads": 2}),
    ("intra_op_threads=0 (default)", {"intra_op_threads": 0}),
    ("inter_op_threads=2", {"inter_op_threads": 2}),
    ("graph_optimization=disable", {"graph_optimization": "disable"}),
    ("graph_optimization=basic", {"graph_optimization": "basic"}),
    ("graph_optimization=extended", {"graph_optimization": "extended"}),
    ("graph_optimization=all", {"graph_optimization": "all"}),
    ("cpu_mem_arena=False", {"cpu_mem_arena": False}),
    ("cpu_mem_arena=True", {"cpu_mem_arena": True}),
)


def _session_sweep(ctx: BenchContext) -> list[dict[str, Any]]:
    side = ctx.preset.tuning_input
    batch = ctx.image(side, seed=2)[np.newaxis].astype(np.float32)
    rows = []
    for label, overrides in SESSION_VARIANTS:
        engine = ctx.make_engine(tile_size=side, **overrides)
        timing, output = time_call(lambda engine=engine: engine.run(batch), ctx.preset.repeats)
        rows.append(
            {
                "variant": label,
                "time_ms": timing.as_dict(),
                "output_mp_per_s": round(
                    megapixels_per_second(output.shape[1] * output.shape[2], timing.median), 3
                ),
            }
        )
        ctx.log(f"tuning: {label} {timing.median * 1000:.0f} ms")
    return rows


def _tile_sweep(ctx: BenchContext) -> list[dict[str, Any]]:
    engine = ctx.engine
    overlap = ctx.settings.tile_overlap
    rows = []
    for side, tiles in ctx.preset.tile_sweep:
        image = ctx.image(side, seed=3)
        for tile in tiles:
            if tile <= 2 * overlap:
                continue
            timing, _ = time_call(
                lambda tile=tile, image=image: upscale_tiled(
                    image,
                    engine.run,
                    scale=engine.info.scale,
                    tile_size=tile,
                    overlap=overlap,
                    fit=ctx.fit_tiles,
                ),
                repeat=1,
                # Calls of seconds need no warm-up: first-run costs are milliseconds.
                warmup=1 if side <= 256 else 0,
            )
            rows.append(
                {
                    "input": side,
                    "tile_size": tile,
                    "time_ms": timing.as_dict(),
                    "pixel_work": round(pixel_work(side, side, tile, overlap, ctx.fit_tiles), 3),
                    # The biggest activation of one call: the 2x upsampler's 256 channels at
                    # twice the tile's side, float32. Peak memory is a few times this.
                    "largest_activation_mb": round(4 * tile * tile * 256 * 4 / 1e6, 1),
                }
            )
            ctx.log(f"tuning: {side}² tile {tile} {timing.median * 1000:.0f} ms")
    return rows


def _concurrency(ctx: BenchContext) -> dict[str, Any]:
    side = ctx.preset.tuning_input
    images = [ctx.image(side, seed=seed) for seed in range(4)]
    result: dict[str, Any] = {"images": len(images), "input": f"{side}x{side}"}
    for threads in (1, 2):
        engine = ctx.engine

        def upscale(image: np.ndarray, engine: Any = engine) -> np.ndarray:
            return upscale_tiled(
                image,
                engine.run,
                scale=engine.info.scale,
                tile_size=ctx.settings.tile_size,
                overlap=ctx.settings.tile_overlap,
                fit=ctx.fit_tiles,
            )

        upscale(images[0])
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(upscale, images))
            elapsed = time.perf_counter() - started
        result[f"threads={threads}"] = {
            "seconds": round(elapsed, 3),
            "images_per_s": round(len(images) / elapsed, 3),
        }
        ctx.log(f"tuning: {threads} concurrent upscale(s) {elapsed:.2f} s")
    result["two_over_one"] = round(
        result["threads=2"]["images_per_s"] / result["threads=1"]["images_per_s"], 3
    )
    return result


def run(ctx: BenchContext) -> dict[str, Any]:
    """Runs the three sweeps."""
    return {
        "session_input": f"{ctx.preset.tuning_input}x{ctx.preset.tuning_input}",
        "session_options": _session_sweep(ctx),
        "tile_mode": "fit" if ctx.fit_tiles else "fixed",
        "tile_sizes": _tile_sweep(ctx),
        "concurrency": _concurrency(ctx),
    }
