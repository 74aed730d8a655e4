"""Memory section: peak memory of one upscale's pipeline at the service's input limit.

Each case runs `service.upscaler.upscale_image_bytes` in a fresh Python process, so that the
process's peak resident memory (`ru_maxrss`) is that case's alone, and reports how far the call
raised it above what the process held before. The model is a stand-in (nearest-neighbour x4 on
each tile): the model's own memory depends on the tile (0.75 GB at 192 pixels on the CPU, see
`service.config`), the pipeline's on the image, and this section measures the second.

The inputs are random noise: incompressible, so the encoded file is as large as it can be, the
worst case a client can choose to send.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.context import BenchContext

#: (input mode, output format, quality): the cheapest case and the ones that need the most
#: memory per output pixel (alpha, conversions for JPEG, the ensemble's sum).
CASES: tuple[tuple[str, str, str], ...] = (
    ("RGB", "png", "standard"),
    ("RGBA", "png", "standard"),
    ("LA", "jpeg", "standard"),
    ("RGBA", "jpeg", "standard"),
    ("RGBA", "webp", "standard"),
    ("RGB", "png", "max"),
)


class _NearestRuntime:
    """Just enough of `UpscalerRuntime` for `upscale_image_bytes`: x4 by repeating pixels."""

    scale, batch_size, primary_provider = 4, 1, "stand-in"

    def __init__(self, tile_size: int) -> None:
        self.tile_size = tile_size

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return tiles.repeat(self.scale, axis=1).repeat(self.scale, axis=2)


def measure_case(
    mode: str, output_format: str, quality: str, side: int, tile: int, overlap: int
) -> dict[str, Any]:
    """Peak memory growth of one upscale in this process (call it in a fresh one)."""
    from service.encoding import OutputFormat
    from service.upscaler import upscale_image_bytes

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (side, side, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode).save(buffer, "PNG", compress_level=0)
    data = buffer.getvalue()
    del pixels, buffer
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = upscale_image_bytes(
        data,
        _NearestRuntime(tile),  # type: ignore[arg-type]
        overlap=overlap,
        max_input_pixels=side * side,
        output_format=OutputFormat(output_format),
        fit=True,
        ensemble=quality == "max",
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth_bytes = (peak - before) * 1024  # ru_maxrss is in KiB on Linux
    return {
        "input": f"{side}x{side} {mode}",
        "output_format": output_format,
        "quality": quality,
        "growth_mb": round(growth_bytes / 1e6, 1),
        # For scale: the uint8 RGB output alone is 3 bytes a pixel.
        "growth_bytes_per_output_pixel": round(growth_bytes / result.output_pixels, 2),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Measures every case at the largest input the service's settings accept."""
    side = int(ctx.settings.max_input_pixels**0.5)
    if ctx.preset.name == "smoke":
        side = 32
    rows = []
    for mode, output_format, quality in CASES:
        if quality == "max" and side * side > ctx.settings.max_ensemble_input_pixels:
            ensemble_side = int(ctx.settings.max_ensemble_input_pixels**0.5)
            case_side = ensemble_side if ctx.preset.name != "smoke" else side
        else:
            case_side = side
        command = [
            sys.executable,
            "-m",
            "benchmarks.memory_section",
            mode,
            output_format,
            quality,
            str(case_side),
            str(ctx.settings.tile_size),
            str(ctx.settings.tile_overlap),
        ]
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append(row)
        ctx.log(f"memory: {row['input']} -> {output_format} {quality}: +{row['growth_mb']} MB")
    return {
        "model": "stand-in (nearest-neighbour x4); the model's own memory is not included",
        "cases": rows,
    }


if __name__ == "__main__":
    mode_arg, format_arg, quality_arg, *numbers = sys.argv[1:7]
    side_arg, tile_arg, overlap_arg = (int(number) for number in numbers)
    print(
        json.dumps(measure_case(mode_arg, format_arg, quality_arg, side_arg, tile_arg, overlap_arg))
    )
