"""Encoding the upscaled pixels into the response's image format: PNG, lossless WebP or JPEG.

Pure image work, no HTTP: the HTTP layer picks an `OutputFormat` from the Accept header (see
`service.imaging.negotiation`) and this module puts back what decoding set aside (alpha, upscaled
here; the greyscale flag; the ICC profile, within the size limit of
`service.imaging.decode.embeddable_icc`; EXIF and XMP when the request kept them,
`service.imaging.metadata`) and turns the arrays into bytes.

* PNG (the default) is written by `service.imaging.pngwriter` (strips compressed in parallel,
  ISA-L when installed), or by Pillow when `png_encoder="pillow"`. Both decode to identical pixels.
* WebP is always lossless, at libwebp's fastest effort: the point of an upscaler is the detail.
  WebP has no greyscale mode, so grey output becomes RGB with equal channels (and a grey ICC
  profile, which would not fit RGB, is dropped).
* JPEG has no alpha channel: transparent pixels are composited onto white, the colour most
  viewers show behind transparent PNGs. Greyscale stays greyscale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, PngImagePlugin

from service.host import available_cpus
from service.imaging.decode import embeddable_icc, icc_colour_space
from service.imaging.metadata import EXIF_HEADER, Metadata
from service.imaging.pngwriter import deflate_backend, encode_png_strips

if TYPE_CHECKING:
    from service.config import Settings


class OutputFormat(StrEnum):
    """Image formats the service can answer with."""

    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"

    @property
    def media_type(self) -> str:
        """The Content-Type of this format."""
        return f"image/{self.value}"


#: Largest width or height each format can store: libwebp's limit for WebP (VP8L stores 14-bit
#: dimensions), libjpeg's JPEG_MAX_DIMENSION (65500, below the format's 16-bit fields), and PNG's
#: 31-bit fields. Pillow fails with an obscure encoder error past them (measured with Pillow 12:
#: 16384 and 65501 pixels fail), so the service checks before upscaling.
MAX_SIDE: dict[OutputFormat, int] = {
    OutputFormat.PNG: 2**31 - 1,
    OutputFormat.WEBP: 16383,
    OutputFormat.JPEG: 65500,
}


class PngEncoder(StrEnum):
    """Implementations of the PNG output."""

    STRIPS = "strips"  # service.imaging.pngwriter: parallel strips, ISA-L when installed
    PILLOW = "pillow"  # Pillow's single-threaded encoder


@dataclass(frozen=True)
class EncodeOptions:
    """How each output format is written.

    Attributes:
        png_encoder: Which PNG writer to use.
        png_compress_level: zlib-style level 0-9 of the PNG output.
        encode_threads: Threads of the strip PNG writer (0: one per CPU).
        jpeg_quality: JPEG quality 1-100.
    """

    png_encoder: PngEncoder = PngEncoder.STRIPS
    png_compress_level: int = 1
    encode_threads: int = 0
    jpeg_quality: int = 92

    @classmethod
    def from_settings(cls, settings: Settings) -> EncodeOptions:
        """The encoder choices the service's settings name."""
        return cls(
            png_encoder=PngEncoder(settings.png_encoder),
            png_compress_level=settings.png_compress_level,
            encode_threads=settings.encode_threads,
            jpeg_quality=settings.jpeg_quality,
        )


#: libwebp's fastest lossless settings (`method` 0; in lossless mode `quality` is the effort):
#: several times faster than its defaults for slightly larger files. `exact` keeps the colour
#: under fully transparent pixels, as PNG does.
WEBP_LOSSLESS_OPTIONS: dict[str, object] = {
    "lossless": True,
    "method": 0,
    "quality": 0,
    "exact": True,
}

#: Rows converted at a time by `luma` and `flatten_on_white`: their integer temporaries are a
#: few times the size of the pixels, which for whole 8192 x 8192 outputs came to gigabytes.
_ROWS_PER_BLOCK = 256


def luma(rgb: np.ndarray) -> np.ndarray:
    """Greyscale from RGB with Pillow's `convert("L")` formula (ITU-R 601-2, fixed point).

    The same integer arithmetic as Pillow, so every encoder produces the grey Pillow would.
    """
    grey = np.empty(rgb.shape[:2], dtype=np.uint8)
    for start in range(0, rgb.shape[0], _ROWS_PER_BLOCK):
        channels = rgb[start : start + _ROWS_PER_BLOCK].astype(np.uint32)
        total = channels[..., 0] * 19595 + channels[..., 1] * 38470 + channels[..., 2] * 7471
        grey[start : start + _ROWS_PER_BLOCK] = (total + 0x8000) >> 16
    return grey


def compose(rgb: np.ndarray, alpha: np.ndarray | None = None, grey: bool = False) -> np.ndarray:
    """Stacks the output channels: (H, W, C) uint8 with C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
    base = luma(rgb)[..., np.newaxis] if grey else rgb
    if alpha is None:
        return np.ascontiguousarray(base)
    return np.concatenate([base, alpha[..., np.newaxis]], axis=2)


def _save(
    image: Image.Image, image_format: str, metadata: Metadata | None = None, **options: object
) -> bytes:
    options["icc_profile"] = embeddable_icc(options.get("icc_profile"))
    if options["icc_profile"] is None:
        options.pop("icc_profile")
    if metadata is not None and metadata.exif:
        options["exif"] = EXIF_HEADER + metadata.exif  # Pillow drops the header where needed
    if metadata is not None and metadata.xmp:
        if image_format == "PNG":  # Pillow writes PNG's XMP as the text chunk readers look for
            text = PngImagePlugin.PngInfo()
            text.add_itxt("XML:com.adobe.xmp", metadata.xmp.decode("utf-8", "replace"))
            options["pnginfo"] = text
        else:
            options["xmp"] = metadata.xmp
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Upscales an alpha channel (H, W) uint8 with bicubic interpolation to (H*scale, W*scale)."""
    height, width = alpha.shape
    resized = Image.fromarray(alpha).resize(
        (width * scale, height * scale), Image.Resampling.BICUBIC
    )
    return np.asarray(resized)


def encode_png(
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    grey: bool = False,
    icc_profile: bytes | None = None,
    compress_level: int = 1,
    metadata: Metadata | None = None,
) -> bytes:
    """Encodes PNG with Pillow's encoder (RGB, RGBA, L or LA; zlib level 0-9)."""
    image = Image.fromarray(rgb)
    if grey:
        image = image.convert("L")
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    return _save(image, "PNG", metadata, compress_level=compress_level, icc_profile=icc_profile)


def encode_webp_lossless(
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    grey: bool = False,
    icc_profile: bytes | None = None,
    metadata: Metadata | None = None,
) -> bytes:
    """Encodes lossless WebP (RGB or RGBA; grey is written as RGB with equal channels)."""
    pixels = compose(rgb, alpha, grey)
    if grey:
        # WebP stores colour only; repeating the grey keeps the pixels the PNG would have.
        pixels = pixels[..., [0, 0, 0, 1]] if alpha is not None else pixels[..., [0, 0, 0]]
        if icc_colour_space(icc_profile) == b"GRAY":
            icc_profile = None
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return _save(image, "WEBP", metadata, **WEBP_LOSSLESS_OPTIONS, icc_profile=icc_profile)


def flatten_on_white(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composites colour (H, W, C) with alpha (H, W) onto a white background, rounding.

    Exact integer arithmetic: (p * a + 255 * (255 - a)) / 255, rounded to the nearest integer
    (the division never ends in exactly one half, so there are no ties to break).
    """
    flattened = np.empty(pixels.shape, dtype=np.uint8)
    for start in range(0, pixels.shape[0], _ROWS_PER_BLOCK):
        rows = slice(start, start + _ROWS_PER_BLOCK)
        weight = alpha[rows].astype(np.uint32)[..., np.newaxis]
        blended = pixels[rows] * weight + 255 * (255 - weight)
        flattened[rows] = (blended + 127) // 255
    return flattened


def encode_jpeg(
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    grey: bool = False,
    icc_profile: bytes | None = None,
    quality: int = 92,
    metadata: Metadata | None = None,
) -> bytes:
    """Encodes JPEG; alpha, which JPEG cannot hold, is flattened onto white."""
    pixels = compose(rgb, None, grey)
    if alpha is not None:
        pixels = flatten_on_white(pixels, alpha)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., 0]) if grey else pixels)
    return _save(image, "JPEG", metadata, quality=quality, icc_profile=icc_profile)


def encode_output(
    rgb: np.ndarray,
    output_format: OutputFormat,
    options: EncodeOptions,
    *,
    alpha: np.ndarray | None = None,
    grey: bool = False,
    icc_profile: bytes | None = None,
    metadata: Metadata | None = None,
) -> bytes:
    """Encodes the upscaled image in the requested format.

    Args:
        rgb: uint8 (H, W, 3) model output.
        output_format: The format to write.
        options: Encoder choices and levels.
        alpha: Optional uint8 (H, W) alpha; kept by PNG and WebP, flattened onto white by JPEG.
        grey: Write greyscale where the format has it (PNG, JPEG).
        icc_profile: ICC profile to embed; dropped, whatever the format, when it is larger
            than a PNG reader accepts (`service.imaging.decode.embeddable_icc`), so that every
            output can be read back.
        metadata: EXIF and XMP to embed, already made true of this output
            (`service.imaging.metadata.Metadata.for_size`); None: none.

    Returns:
        The encoded file.
    """
    common = {"alpha": alpha, "grey": grey, "icc_profile": icc_profile, "metadata": metadata}
    if output_format is OutputFormat.WEBP:
        return encode_webp_lossless(rgb, **common)
    if output_format is OutputFormat.JPEG:
        return encode_jpeg(rgb, **common, quality=options.jpeg_quality)
    if options.png_encoder is PngEncoder.PILLOW:
        return encode_png(rgb, **common, compress_level=options.png_compress_level)
    return encode_png_strips(
        compose(rgb, alpha, grey),
        level=options.png_compress_level,
        icc_profile=embeddable_icc(icc_profile),
        threads=options.encode_threads,
        exif=metadata.exif if metadata else None,
        xmp=metadata.xmp if metadata else None,
    )


def describe_png_writer(options: EncodeOptions) -> str:
    """Names the PNG writer in use, e.g. `strips (isal level 1, 2 threads)`, for /readyz."""
    if options.png_encoder is PngEncoder.PILLOW:
        return f"pillow (zlib level {options.png_compress_level})"
    backend = deflate_backend(options.png_compress_level)
    threads = options.encode_threads or available_cpus()
    return f"strips ({backend.name} level {backend.level}, {threads} threads)"
