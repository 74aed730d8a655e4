"""One upscale from uploaded bytes to PNG bytes: decode, tile through the model, encode.

This is blocking, CPU-heavy work; the HTTP layer runs it in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.imaging import decode_image, encode_png, resize_alpha
from service.tiling import upscale_tiled

if TYPE_CHECKING:
    from service.runtime import UpscalerRuntime


@dataclass(frozen=True)
class UpscaleResult:
    """The encoded output and what the response headers and metrics report about it."""

    png: bytes
    input_width: int
    input_height: int
    output_width: int
    output_height: int
    inference_seconds: float
    provider: str

    @property
    def input_pixels(self) -> int:
        """Pixels of the (upright) input image."""
        return self.input_width * self.input_height

    @property
    def output_pixels(self) -> int:
        """Pixels of the output image."""
        return self.output_width * self.output_height


def upscale_image_bytes(
    data: bytes,
    runtime: UpscalerRuntime,
    *,
    overlap: int,
    max_input_pixels: int,
    png_compress_level: int,
) -> UpscaleResult:
    """Upscales an uploaded image file and encodes the result as PNG.

    Args:
        data: The uploaded image file.
        runtime: The loaded model.
        overlap: Tile overlap in input pixels (see `service.tiling`).
        max_input_pixels: Largest accepted input, checked before decoding.
        png_compress_level: zlib level of the output PNG.

    Returns:
        The PNG and its measurements.

    Raises:
        service.exceptions.UpscalerError: For input the service rejects (see `decode_image`).
    """
    decoded = decode_image(data, max_pixels=max_input_pixels)
    started = time.perf_counter()
    upscaled = upscale_tiled(
        decoded.rgb,
        runtime.run,
        scale=runtime.scale,
        tile_size=runtime.tile_size,
        overlap=overlap,
        batch_size=runtime.batch_size,
    )
    inference_seconds = time.perf_counter() - started
    alpha = None if decoded.alpha is None else resize_alpha(decoded.alpha, runtime.scale)
    png = encode_png(
        upscaled,
        alpha=alpha,
        grey=decoded.grey,
        icc_profile=decoded.icc_profile,
        compress_level=png_compress_level,
    )
    return UpscaleResult(
        png=png,
        input_width=decoded.width,
        input_height=decoded.height,
        output_width=int(upscaled.shape[1]),
        output_height=int(upscaled.shape[0]),
        inference_seconds=inference_seconds,
        provider=runtime.primary_provider,
    )
