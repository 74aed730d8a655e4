"""One upscale, from uploaded bytes to image bytes: decode → model → encode.

LitServe's split of a request (decode_request, predict, encode_response) as the methods of one
`Pipeline`, built once at start-up: which tiler runs the model (its tile shape, batch and fitted
or fixed tiles) is decided there from the settings and the provider really in use, never per
request. Blocking, CPU-heavy work on bytes and numpy arrays, with no HTTP in it: the HTTP layer
runs `Pipeline.__call__` in a worker thread.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from service.core.ensemble import self_ensemble_uint8
from service.core.tiling import TileProgress, fixed_tile_shapes, upscale_tiled
from service.exceptions import ClientDisconnectedError, ImageTooLargeError
from service.imaging.decode import DecodedImage, ImageInfo, decode_image, inspect_image
from service.imaging.encode import EncodeOptions, OutputFormat, encode_output, resize_alpha
from service.imaging.negotiation import choose_format_for_size

if TYPE_CHECKING:
    from service.config import Settings
    from service.core.engines import Engine

#: Upscales an RGB uint8 image; `interrupt` is called between model calls and may raise.
TileRunner = Callable[..., np.ndarray]


class Quality(enum.StrEnum):
    """How much model work one upscale may take (the `quality` query parameter)."""

    #: One pass of the model over the image.
    STANDARD = "standard"
    #: Self-ensemble: the model runs on the 8 flips and rotations of the image and the results
    #: are averaged (the EDSR paper's "+" results), for 8 times the compute.
    MAX = "max"


@dataclass(frozen=True)
class UpscaleResult:
    """The encoded output and what the response headers and metrics report about it.

    Attributes:
        content: The encoded image.
        output_format: Its format.
        decode_seconds: Time to validate and decode the upload.
        inference_seconds: Time to upscale all tiles (model runs plus cutting and stitching).
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

    @property
    def input_pixels(self) -> int:
        """Pixels of the (upright) input image."""
        return self.input_width * self.input_height

    @property
    def output_pixels(self) -> int:
        """Pixels of the output image."""
        return self.output_width * self.output_height


def _stop_if_set(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ClientDisconnectedError("the client disconnected; the upscale was abandoned")


@dataclass(frozen=True)
class Pipeline:
    """decode → model → encode, with the tile runner fixed when the service starts.

    Attributes:
        upscale_rgb: The tiler bound to the model (see `for_engine`).
        scale: The model's upscaling factor.
        max_input_pixels: Largest accepted input, checked from the header before decoding.
        max_ensemble_input_pixels: Largest input for `Quality.MAX`.
        encode_options: Encoder choices and levels.
        tile_shapes: Every (rows, columns) tile shape the model will be handed, for warming
            them all up: with fixed tiles the square and the strips thin images are cut into
            (`service.core.tiling.fixed_tile_shapes`); empty with fitted tiles, whose shape follows
            each image (CPU providers run any shape at no extra cost).
    """

    upscale_rgb: TileRunner
    scale: int
    max_input_pixels: int
    max_ensemble_input_pixels: int
    encode_options: EncodeOptions = field(default_factory=EncodeOptions)
    tile_shapes: tuple[tuple[int, int], ...] = ()

    @classmethod
    def for_engine(cls, engine: Engine, settings: Settings) -> Pipeline:
        """The pipeline of a loaded engine: its tile shape, batch and tile mode, once."""
        info = engine.info
        fit = info.tile_mode == "fit"
        upscale_rgb = partial(
            upscale_tiled,
            run_tiles=engine.run,
            scale=info.scale,
            tile_size=info.tile_size,
            overlap=settings.tile_overlap,
            batch_size=info.batch_size,
            fit=fit,
        )
        shapes = () if fit else tuple(fixed_tile_shapes(info.tile_size, settings.tile_overlap))
        return cls(
            upscale_rgb=upscale_rgb,
            scale=info.scale,
            max_input_pixels=settings.max_input_pixels,
            max_ensemble_input_pixels=settings.max_ensemble_input_pixels,
            encode_options=EncodeOptions.from_settings(settings),
            tile_shapes=shapes,
        )

    def check(
        self, data: bytes, formats: tuple[OutputFormat, ...], quality: Quality
    ) -> tuple[OutputFormat, ImageInfo]:
        """Checks an upload from its header alone, and picks the answer's format; the header
        (its size: what an estimate of the work needs) comes with it.

        Cheap (no pixel is decoded), so the HTTP layer runs it before the request queues: a
        file that is too large or not an image, or whose output no acceptable format can hold,
        is refused without waiting for a slot.

        Raises:
            service.exceptions.UpscalerError: See `inspect_image` and `choose_format_for_size`;
                `ImageTooLargeError` also for `Quality.MAX` past its own pixel limit.
        """
        info = inspect_image(data, max_pixels=self.max_input_pixels)
        if quality is Quality.MAX and info.pixels > self.max_ensemble_input_pixels:
            raise ImageTooLargeError(
                f"quality=max runs the model 8 times, so it takes images of up to "
                f"{self.max_ensemble_input_pixels} pixels; this one is {info.width}x"
                f"{info.height} = {info.pixels} pixels: send it with quality=standard"
            )
        size = (info.width * self.scale, info.height * self.scale)
        return choose_format_for_size(formats, *size), info

    def choose_format(
        self, data: bytes, formats: tuple[OutputFormat, ...], quality: Quality
    ) -> OutputFormat:
        """The answer's format for an upload that passes `check` (which raises otherwise)."""
        return self.check(data, formats, quality)[0]

    def decode_request(self, data: bytes, *, keep_metadata: bool = False) -> DecodedImage:
        """Validates and decodes the upload (see `service.imaging.decode.decode_image`), with
        its EXIF and XMP when they are to be kept."""
        return decode_image(data, max_pixels=self.max_input_pixels, keep_metadata=keep_metadata)

    def predict(
        self,
        decoded: DecodedImage,
        quality: Quality,
        interrupt: Callable[[], None],
        progress: TileProgress | None = None,
    ) -> np.ndarray:
        """The model's uint8 RGB output, averaged over the 8 transforms for `Quality.MAX`
        (`progress` then hears of 8 passes over the tiles, the first untransformed)."""
        upscale = partial(self.upscale_rgb, interrupt=interrupt)
        if progress is not None:
            upscale = partial(upscale, progress=progress)
        if quality is Quality.MAX:
            return self_ensemble_uint8(upscale, decoded.rgb)
        return upscale(decoded.rgb)

    def encode_response(
        self, upscaled: np.ndarray, decoded: DecodedImage, output_format: OutputFormat
    ) -> bytes:
        """Puts back alpha, greyscale, the ICC profile and any metadata kept (made true of the
        output), and encodes `output_format`."""
        alpha = None if decoded.alpha is None else resize_alpha(decoded.alpha, self.scale)
        height, width = upscaled.shape[:2]
        metadata = decoded.metadata.for_size(width, height) if decoded.metadata else None
        return encode_output(
            upscaled,
            output_format,
            self.encode_options,
            alpha=alpha,
            grey=decoded.grey,
            icc_profile=decoded.icc_profile,
            metadata=metadata,
        )

    def __call__(
        self,
        data: bytes,
        output_format: OutputFormat = OutputFormat.PNG,
        quality: Quality = Quality.STANDARD,
        cancel: threading.Event | None = None,
        progress: TileProgress | None = None,
        *,
        keep_metadata: bool = False,
    ) -> UpscaleResult:
        """Upscales an uploaded image file and encodes the result, timing each step;
        `progress` is told of the tiles as they finish (see `upscale_tiled`); the EXIF and XMP
        go into the output with `keep_metadata` (`service.imaging.metadata`).

        Raises:
            service.exceptions.UpscalerError: For input the service rejects (see `decode_image`).
            service.exceptions.ClientDisconnectedError: When `cancel` was set during the work.
        """
        started = time.perf_counter()
        decoded = self.decode_request(data, keep_metadata=keep_metadata)
        decode_seconds = time.perf_counter() - started
        return self.upscale_decoded(
            decoded, output_format, quality, cancel, progress, decode_seconds=decode_seconds
        )

    def upscale_decoded(
        self,
        decoded: DecodedImage,
        output_format: OutputFormat = OutputFormat.PNG,
        quality: Quality = Quality.STANDARD,
        cancel: threading.Event | None = None,
        progress: TileProgress | None = None,
        *,
        decode_seconds: float = 0.0,
    ) -> UpscaleResult:
        """The rest of `__call__` once the upload is decoded: model, then encode (the model
        choice of `service.core.choice` decodes once and runs the chosen model's pipeline).

        Raises:
            service.exceptions.ClientDisconnectedError: When `cancel` was set during the work.
        """
        interrupt = partial(_stop_if_set, cancel)
        started = time.perf_counter()
        upscaled = self.predict(decoded, quality, interrupt, progress)
        upscaled_at = time.perf_counter()
        interrupt()
        content = self.encode_response(upscaled, decoded, output_format)
        return UpscaleResult(
            content=content,
            output_format=output_format,
            input_width=decoded.width,
            input_height=decoded.height,
            output_width=int(upscaled.shape[1]),
            output_height=int(upscaled.shape[0]),
            decode_seconds=decode_seconds,
            inference_seconds=upscaled_at - started,
            encode_seconds=time.perf_counter() - upscaled_at,
        )
