"""One upscale from uploaded bytes to image bytes: decode, tile through the model, encode.

This is blocking, CPU-heavy work; the HTTP layer runs it in a worker thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.encoding import EncodeOptions, OutputFormat, encode_output
from service.ensemble import self_ensemble_uint8
from service.exceptions import ClientDisconnectedError
from service.imaging import decode_image, resize_alpha
from service.tiling import upscale_tiled, upscale_tiled_async

if TYPE_CHECKING:
    from service.batching import TileBatcher
    from service.runtime import UpscalerRuntime

#: Groups of tiles a request keeps queued in the batcher: one running, one ready to go, so the
#: model never waits for the request thread to cut or stitch tiles.
TILE_GROUPS_IN_FLIGHT = 2

#: Providers that tune kernels for each input shape, and so want one fixed tile shape.
_SHAPE_TUNED_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def fits_tiles(tile_mode: str, provider: str) -> bool:
    """Whether tiles are fitted to each image (`fit`) rather than fixed squares.

    `auto` fits them on the CPU provider, where any shape runs at no extra cost and fitted
    tiles save overlap and padding work, and keeps them fixed on GPU providers, which search
    kernels for every new shape.
    """
    if tile_mode not in ("auto", "fixed", "fit"):
        raise ValueError(f"tile_mode must be auto, fixed or fit, got {tile_mode!r}")
    if tile_mode == "auto":
        return provider not in _SHAPE_TUNED_PROVIDERS
    return tile_mode == "fit"


@dataclass(frozen=True)
class UpscaleResult:
    """The encoded output and what the response headers and metrics report about it.

    Attributes:
        content: The encoded image.
        output_format: Its format.
        decode_seconds: Time to validate and decode the upload.
        inference_seconds: Time to upscale all tiles (model runs, plus cutting and stitching,
            plus any wait for a shared batch).
        encode_seconds: Time to encode the output (alpha upscaling included).
    """

    content: bytes
    output_format: OutputFormat
    input_width: int
    input_height: int
    output_width: int
    output_height: int
    decode_seconds: float
    inference_seconds: float
    encode_seconds: float
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
    output_format: OutputFormat = OutputFormat.PNG,
    encode_options: EncodeOptions | None = None,
    batcher: TileBatcher | None = None,
    fit: bool = False,
    ensemble: bool = False,
    cancel: threading.Event | None = None,
) -> UpscaleResult:
    """Upscales an uploaded image file and encodes the result.

    Args:
        data: The uploaded image file.
        runtime: The loaded model.
        overlap: Tile overlap in input pixels (see `service.tiling`).
        max_input_pixels: Largest accepted input, checked before decoding.
        output_format: Format of the answer.
        encode_options: Encoder choices and levels (defaults when None).
        batcher: Micro-batcher in front of `runtime.run` shared by concurrent requests; without
            one the tiles run directly, one padded batch at a time. Only for fixed tiles.
        fit: Fit the tiles to the image (see `service.tiling.fit_window`).
        ensemble: The quality mode: average the model over the 8 flips and rotations of the
            image (`service.ensemble`), 8 times the model work for about 0.1 dB.

    Returns:
        The encoded image and its measurements.

    Raises:
        service.exceptions.UpscalerError: For input the service rejects (see `decode_image`).
        service.exceptions.ClientDisconnectedError: When `cancel` was set during the work.
    """
    started = time.perf_counter()
    decoded = decode_image(data, max_pixels=max_input_pixels)
    decoded_at = time.perf_counter()
    geometry = {
        "scale": runtime.scale,
        "tile_size": runtime.tile_size,
        "overlap": overlap,
        "batch_size": runtime.batch_size,
    }
    if batcher is not None and fit:
        raise ValueError("fitted tiles vary in shape and cannot go through the tile batcher")

    def stop_if_cancelled() -> None:
        if cancel is not None and cancel.is_set():
            raise ClientDisconnectedError("the client disconnected; the upscale was abandoned")

    def upscale_rgb(rgb: np.ndarray) -> np.ndarray:
        if batcher is None:
            return upscale_tiled(rgb, runtime.run, fit=fit, interrupt=stop_if_cancelled, **geometry)
        with batcher.client():
            return upscale_tiled_async(
                rgb,
                batcher.submit,
                in_flight=TILE_GROUPS_IN_FLIGHT,
                interrupt=stop_if_cancelled,
                **geometry,
            )

    upscaled = (
        self_ensemble_uint8(upscale_rgb, decoded.rgb) if ensemble else upscale_rgb(decoded.rgb)
    )
    upscaled_at = time.perf_counter()
    stop_if_cancelled()
    alpha = None if decoded.alpha is None else resize_alpha(decoded.alpha, runtime.scale)
    content = encode_output(
        upscaled,
        output_format,
        encode_options or EncodeOptions(),
        alpha=alpha,
        grey=decoded.grey,
        icc_profile=decoded.icc_profile,
    )
    encoded_at = time.perf_counter()
    return UpscaleResult(
        content=content,
        output_format=output_format,
        input_width=decoded.width,
        input_height=decoded.height,
        output_width=int(upscaled.shape[1]),
        output_height=int(upscaled.shape[0]),
        decode_seconds=decoded_at - started,
        inference_seconds=upscaled_at - decoded_at,
        encode_seconds=encoded_at - upscaled_at,
        provider=runtime.primary_provider,
    )
