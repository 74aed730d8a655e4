"""Tiling section: the service's tiled upscale against one whole-image call on the same input.

Tiling costs the overlap (context computed twice) and, with fixed tiles, the padding of the
last window; it saves memory and, on CPUs, can run at a better rate per pixel because smaller
tensors stay in cache. Both modes are measured, plus the pixel work each one does relative to
the image, so the ratio can be explained and not just reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.measure import ratio, time_interleaved
from service.core.tiling import model_pixels, plan_tiles, tile_shape, upscale_tiled


def pixel_work(height: int, width: int, tile_size: int, overlap: int, fit: bool) -> float:
    """LR pixels the model processes for a tiled image, relative to the image's own pixels."""
    return model_pixels(height, width, tile_size, overlap, fit=fit) / (height * width)


def _psnr(difference: np.ndarray) -> float | None:
    """PSNR in dB of an absolute uint8 difference; None when the images are identical."""
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    return round(10 * np.log10(255.0**2 / mse), 1) if mse else None


def run(ctx: BenchContext) -> dict[str, Any]:
    """Times whole-image inference and the tiled path on one `tiling_input`-sided image."""
    side = ctx.preset.tiling_input
    image = ctx.image(side, seed=1)
    engine = ctx.engine
    settings = ctx.settings
    tile, overlap = settings.tile_size, settings.tile_overlap
    repeats = ctx.preset.repeats
    # Calls of seconds need no untimed warm-up: first-run costs are milliseconds.
    warmup = 1 if side <= 256 else 0

    def tiled(fit: bool) -> np.ndarray:
        return upscale_tiled(
            image,
            engine.run,
            scale=engine.info.scale,
            tile_size=tile,
            overlap=overlap,
            batch_size=engine.info.batch_size,
            fit=fit,
        )

    # Whole and tiled calls take turns, so the drift of a shared VM's speed cancels in the ratio.
    timings = time_interleaved(
        {
            "whole": lambda: engine.run(image[np.newaxis].astype(np.float32))[0],
            "fit": lambda: tiled(True),
            "fixed": lambda: tiled(False),
        },
        repeats,
        warmup,
    )
    whole_timing, whole = timings["whole"]
    whole_uint8 = np.clip(np.rint(whole), 0, 255).astype(np.uint8)
    ctx.log(f"tiling: whole {side}² {whole_timing.median * 1000:.0f} ms")
    result: dict[str, Any] = {
        "input": f"{side}x{side}",
        "tile_size": tile,
        "tile_overlap": overlap,
        "service_mode": "fit" if ctx.fit_tiles else "fixed",
        "whole_ms": whole_timing.as_dict(),
        "modes": {},
    }
    for mode in ("fit", "fixed"):
        fit = mode == "fit"
        timing, tiled_image = timings[mode]
        difference = np.abs(tiled_image.astype(np.int16) - whole_uint8)
        result["modes"][mode] = {
            "tiled_ms": timing.as_dict(),
            "tiled_over_whole": round(ratio(timing.median, whole_timing.median) or 0, 3),
            "pixel_work": round(pixel_work(side, side, tile, overlap, fit), 3),
            "tiles": len(plan_tiles(side, side, tile, overlap, fit=fit)),
            "tile_shape": list(tile_shape(side, side, tile, overlap, fit=fit)),
            "max_abs_diff_vs_whole": int(difference.max()),
            # A seam would show as many differing pixels; rounding flips are rare and 1 level.
            "fraction_differing_vs_whole": float(np.mean(difference > 0)),
            "psnr_vs_whole_db": _psnr(difference),
        }
        ctx.log(f"tiling: {mode} {timing.median * 1000:.0f} ms")
    result["tiled_over_whole"] = result["modes"][result["service_mode"]]["tiled_over_whole"]
    return result
