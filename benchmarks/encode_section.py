"""Encode section: every candidate encoder and level on a real upscaled output.

The image is the model's own output for a real photo (encoders are sensitive to content: the
upscaled picture is smoother than a photo and compresses differently). Each lossless candidate
is decoded back with Pillow and compared with the pixels, so a fast but wrong encoder shows.
OpenCV and imagecodecs are measured when installed; the service depends on neither.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.context import BenchContext
from benchmarks.measure import megapixels_per_second, time_call
from service.core.tiling import upscale_tiled
from service.host import available_cpus
from service.imaging.encode import encode_jpeg, encode_png, encode_webp_lossless
from service.imaging.pngwriter import encode_png_strips

Encoder = Callable[[np.ndarray], bytes]


def _optional_encoders() -> dict[str, Encoder]:
    encoders: dict[str, Encoder] = {}
    try:
        import cv2

        for level in (1, 3):
            encoders[f"opencv-png level {level}"] = lambda rgb, level=level: cv2.imencode(
                ".png", rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level]
            )[1].tobytes()
    except ImportError:
        pass
    try:
        import imagecodecs

        encoders["imagecodecs-png level 1"] = lambda rgb: bytes(
            imagecodecs.png_encode(rgb, level=1)
        )
    except ImportError:
        pass
    return encoders


def candidates(threads: int) -> dict[str, tuple[Encoder, bool]]:
    """Name -> (encoder of an RGB array, lossless?)."""
    table: dict[str, tuple[Encoder, bool]] = {}
    for level in (0, 1, 2, 3):
        table[f"pillow-png level {level}"] = (
            lambda rgb, level=level: encode_png(rgb, compress_level=level),
            True,
        )
    for name, encoder in _optional_encoders().items():
        table[name] = (encoder, True)
    table[f"strips-png zlib level 1, {threads} threads"] = (
        lambda rgb: encode_png_strips(rgb, level=1, threads=threads, prefer_isal=False),
        True,
    )
    table["strips-png level 1, 1 thread"] = (
        lambda rgb: encode_png_strips(rgb, level=1, threads=1),
        True,
    )
    for level in (1, 2, 3):
        table[f"strips-png level {level}, {threads} threads"] = (
            lambda rgb, level=level: encode_png_strips(rgb, level=level, threads=threads),
            True,
        )
    table["webp lossless (service settings)"] = (encode_webp_lossless, True)
    table["jpeg quality 92 (service settings)"] = (lambda rgb: encode_jpeg(rgb, quality=92), False)
    return table


def _decodes_to(data: bytes, rgb: np.ndarray) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return bool(np.array_equal(np.asarray(image.convert("RGB")), rgb))


def upscaled_output(ctx: BenchContext, side: int) -> np.ndarray:
    """The service's upscale of a `side`-pixel benchmark photo."""
    engine = ctx.engine
    return upscale_tiled(
        ctx.image(side, seed=4),
        engine.run,
        scale=engine.info.scale,
        tile_size=ctx.settings.tile_size,
        overlap=ctx.settings.tile_overlap,
        fit=ctx.fit_tiles,
    )


def run(ctx: BenchContext) -> dict[str, Any]:
    """Times each candidate on the upscaled `encode_input` photo."""
    rgb = upscaled_output(ctx, ctx.preset.encode_input)
    pixels = rgb.shape[0] * rgb.shape[1]
    threads = ctx.settings.encode_threads or available_cpus()
    rows = []
    for name, (encoder, lossless) in candidates(threads).items():
        timing, data = time_call(lambda encoder=encoder: encoder(rgb), ctx.preset.repeats)
        rows.append(
            {
                "encoder": name,
                "time_ms": timing.as_dict(),
                "mp_per_s": round(megapixels_per_second(pixels, timing.median), 1),
                "bytes": len(data),
                "lossless_round_trip": _decodes_to(data, rgb) if lossless else None,
            }
        )
        ctx.log(f"encode: {name} {megapixels_per_second(pixels, timing.median):.1f} MP/s")
    return {
        "image": f"{rgb.shape[1]}x{rgb.shape[0]} RGB, model output",
        "threads": threads,
        "encoders": rows,
    }
