"""Memory section: peak memory of one upscale's pipeline at the service's input limit.

Each case runs the service's `service.core.pipeline.Pipeline` in a fresh Python process, so that the
process's peak resident memory (`ru_maxrss`) is that case's alone, and reports how far the call
raised it above what the process held before. The model is a stand-in (nearest-neighbour x4 on
each tile): the model's own memory depends on the tile (tuning section), the pipeline's on the
image, and this section measures the second.

The inputs are random noise: incompressible, so the encoded file is as large as it can be, the
worst case a client can choose to send.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
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


def _nearest_x4(tiles: np.ndarray) -> np.ndarray:
    """The stand-in model: x4 by repeating pixels."""
    return tiles.repeat(4, axis=1).repeat(4, axis=2)


def write_input(path: Path, mode: str, side: int) -> None:
    """Writes the noise image of one case (in the parent, so its making never counts)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (side, side, len(mode)), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(), mode).save(path, "PNG", compress_level=0)


def measure_case(
    upload: Path, output_format: str, quality: str, tile: int, overlap: int
) -> dict[str, Any]:
    """Peak memory growth of one upscale of `upload` in this process (call it in a fresh one).

    The peak before the call is what the process needed to start and read the upload; making
    the test image happens in another process, so its temporaries cannot hide the call's.
    """
    from functools import partial

    from service.core.pipeline import Pipeline, Quality
    from service.core.tiling import upscale_tiled
    from service.imaging.encode import OutputFormat

    data = upload.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        (width, height), mode = image.size, image.mode
    pipeline = Pipeline(
        upscale_rgb=partial(
            upscale_tiled, run_tiles=_nearest_x4, scale=4, tile_size=tile, overlap=overlap, fit=True
        ),
        scale=4,
        max_input_pixels=width * height,
        max_ensemble_input_pixels=width * height,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = pipeline(data, OutputFormat(output_format), Quality(quality))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth_bytes = (peak - before) * 1024  # ru_maxrss is in KiB on Linux
    return {
        "input": f"{width}x{height} {mode}",
        "output_format": output_format,
        "quality": quality,
        "growth_mb": round(growth_bytes / 1e6, 1),
        # For scale: the uint8 RGB output alone is 3 bytes a pixel.
        "growth_bytes_per_output_pixel": round(growth_bytes / result.output_pixels, 2),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Measures every case at the largest input the service's settings accept."""
    side = 32 if ctx.preset.name == "smoke" else int(ctx.settings.max_input_pixels**0.5)
    # quality=max has its own, smaller limit.
    ensemble_side = min(side, int(ctx.settings.max_ensemble_input_pixels**0.5))
    if ctx.preset.name == "smoke":
        ensemble_side = side
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-section-") as scratch:
        for mode, output_format, quality in CASES:
            case_side = ensemble_side if quality == "max" else side
            upload = Path(scratch) / f"{mode}-{case_side}.png"
            if not upload.exists():
                write_input(upload, mode, case_side)
            command = [
                sys.executable,
                "-m",
                "benchmarks.memory_section",
                str(upload),
                output_format,
                quality,
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
    upload_arg, format_arg, quality_arg, tile_arg, overlap_arg = sys.argv[1:6]
    print(
        json.dumps(
            measure_case(Path(upload_arg), format_arg, quality_arg, int(tile_arg), int(overlap_arg))
        )
    )
