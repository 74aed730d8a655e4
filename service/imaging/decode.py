"""Decoding an upload into the arrays the model takes; no HTTP, no model.

Input bytes become an RGB uint8 array (what the model sees) plus what must be put back
afterwards: the alpha channel, whether the picture is greyscale, and its ICC profile. The checks
run cheapest first, and the pixel limit is enforced from the header before any pixel data is
decoded, so a small file that claims to be huge (a decompression bomb) costs nothing. Pillow's
WebP opener decodes the whole canvas while opening, so WebP sizes are read from the file's RIFF
chunks (VP8, VP8L or VP8X) before Pillow sees it.

Metadata policy, the same for every input format: only the ICC profile is kept (EXIF, XMP and
text are dropped; the EXIF orientation is applied to the pixels), and only when it describes
the output's colour space and is no larger than the largest profile a PNG reader accepts
(`PngImagePlugin.MAX_TEXT_CHUNK`, 1 MiB, the limit the service applies to PNG uploads too), so
every output can be read back by Pillow and by the service itself. On request
(`keep_metadata`), EXIF and XMP are read too, for the output (`service.imaging.metadata`).

Mode handling, in short:

* RGB, YCbCr -> RGB; CMYK -> RGB (through its ICC profile when it has one).
* RGBA, RGBa, PA, P or RGB with a transparent colour -> RGB plus alpha.
* L, 1 -> grey; LA, La, L with a transparent colour (also 16-bit) -> grey plus alpha.
* 16-bit greyscale (I;16*, and I from PNG) -> 8-bit grey by scaling with 255/65535 (that is,
  1/257) and rounding, so white stays white. 16-bit colour PNGs are reduced to 8 bits by
  Pillow itself while decoding (it keeps the high byte).
* Anything else (32-bit float or integer, signed samples, LAB, HSV...) is rejected as
  unsupported.

Grey images are upscaled as RGB with three equal channels and turned back into grey by
`service.imaging.encode`; alpha is upscaled separately, since the model only knows colour.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from service.exceptions import (
    CorruptImageError,
    EmptyUploadError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.imaging.metadata import Metadata, read_metadata
from service.imaging.webp import vp8_quantizer

logger = logging.getLogger(__name__)

#: Pillow formats accepted as input. The JPEG opener also covers the multi-picture JPEGs many
#: cameras write, which Pillow then reports as format "MPO".
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

#: File signatures of the accepted formats, used to tell a damaged file of a supported format
#: (reported as corrupt) from bytes that are not a supported image at all.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_SIXTEEN_BIT_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

#: Pillow mode to convert each accepted input mode to, before the arrays are taken.
_TARGET_MODES: dict[str, str] = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says, before any pixel is decoded."""

    format: str
    mode: str
    width: int
    height: int
    #: A JPEG's luminance quantisation table (64 values, natural order); None for other files.
    jpeg_luma_table: tuple[int, ...] | None = None
    #: A lossy WebP's largest quantiser index (`service.imaging.webp`); None for other files,
    #: and from `inspect_image`, which reads no more than the header.
    webp_quantizer: int | None = None

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright image ready for the model.

    Attributes:
        rgb: Pixels as uint8 of shape (H, W, 3); grey images have three equal channels.
        alpha: Alpha as uint8 of shape (H, W), or None for opaque images.
        grey: Whether the result should be written back as greyscale.
        icc_profile: The input's ICC profile when it still describes the output colours and
            is small enough for every output format (`embeddable_icc`).
        info: The header of the source file (format, mode, size before EXIF rotation).
        metadata: The EXIF and XMP to write into the output, when asked to keep them.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grey: bool
    icc_profile: bytes | None
    info: ImageInfo
    metadata: Metadata | None = None

    @property
    def height(self) -> int:
        """Height in pixels, after EXIF orientation."""
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels, after EXIF orientation."""
        return int(self.rgb.shape[1])


def _signature_format(data: bytes) -> str | None:
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _plugin_refusal(data: bytes, image_format: str) -> str | None:
    """Why the format's own Pillow plugin refuses the data (`Image.open` hides the reason)."""
    opener = Image.OPEN.get(image_format)
    if opener is None:
        return None
    try:
        opener[0](io.BytesIO(data), "").close()
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


def _unreadable(data: bytes) -> CorruptImageError | UnsupportedImageError:
    """Explains why Pillow could not open bytes with one of the accepted formats."""
    accepted = "JPEG, PNG, WebP, BMP, TIFF or GIF"
    claimed = _signature_format(data)
    if claimed is not None:
        reason = _plugin_refusal(data, claimed)
        # A well-formed file in a variant Pillow cannot decode (a float16 TIFF, say) is the
        # client's choice of format, not damage: 415, not 422.
        if reason and any(word in reason.lower() for word in ("unknown pixel mode", "unsupported")):
            return UnsupportedImageError(
                f"this {claimed} file stores its pixels in a way the service cannot read "
                f"({reason}); send 8- or 16-bit integer pixels"
            )
        suffix = f" ({reason})" if reason else ""
        return CorruptImageError(
            f"the data starts like a {claimed} file but its header is damaged{suffix}"
        )
    # Ask Pillow about every format it knows, only to name the format in the message. Opening
    # reads just the header, and the pixels are never loaded.
    try:
        with Image.open(io.BytesIO(data)) as image:
            other_format = image.format
    except Exception:
        other_format = None
    if other_format:
        return UnsupportedImageError(f"{other_format} images are not supported; send {accepted}")
    return UnsupportedImageError(f"the upload is not an image in a supported format ({accepted})")


def _metadata_too_large(exc: Exception) -> ImageTooLargeError | None:
    # Pillow refuses compressed PNG chunks (ICC profiles, text) that inflate past
    # PngImagePlugin.MAX_TEXT_CHUNK, 1 MiB: a safety limit against zip bombs, not damage.
    if isinstance(exc, ValueError) and "MAX_TEXT_CHUNK" in str(exc):
        return ImageTooLargeError(
            "the image's embedded metadata (an ICC profile or a text chunk) inflates to more "
            "than the 1 MiB the service accepts; remove the metadata and send it again"
        )
    return None


def _damaged(exc: Exception, image_format: str) -> ImageTooLargeError | CorruptImageError:
    """The client's error for a file whose data Pillow could not read."""
    return _metadata_too_large(exc) or CorruptImageError(
        f"{image_format} file is truncated or corrupt: {exc}"
    )


def webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a WebP file from its first RIFF chunk, or None when it cannot tell.

    The canvas of an extended file (VP8X, 24-bit sizes), else the size of the simple lossy
    (VP8: 14-bit sizes after the key frame's start code) or lossless (VP8L: 14-bit sizes after
    its signature byte) bitstream, as libwebp reads them. Pillow accepts a WebP file only when
    its first chunk is one of these three.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk, payload = data[12:16], data[20:30]
    if chunk == b"VP8X":
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return width, height
    if chunk == b"VP8L" and payload[0] == 0x2F:
        (bits,) = struct.unpack("<I", payload[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", payload[6:10])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
    )


def _check_declared_size(data: bytes, max_pixels: int) -> None:
    """The pixel limit for formats whose Pillow opener allocates the picture (WebP)."""
    size = webp_canvas_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_many_pixels(*size, max_pixels)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise EmptyUploadError("the upload is empty")
    _check_declared_size(data, max_pixels)
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at twice its default limit, far beyond ours; its message
        # quotes its own limit, which would mislead the client, so only its count is kept.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared[1])} pixels" if declared else "more pixels than Pillow will open"
        raise ImageTooLargeError(
            f"image is far too large: its header declares {size}; the limit is {max_pixels} pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _unreadable(data) from exc
    except Exception as exc:  # malformed headers raise many unrelated types inside Pillow
        raise _metadata_too_large(exc) or CorruptImageError(
            f"the image header is truncated or damaged: {exc}"
        ) from exc


def _header_info(image: Image.Image, max_pixels: int) -> ImageInfo:
    width, height = image.size
    tables = getattr(image, "quantization", None) or {}
    luma_table = tuple(tables[0]) if 0 in tables else None
    info = ImageInfo(image.format or "unknown", image.mode, width, height, luma_table)
    if info.pixels > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has an empty size {width}x{height}")
    return info


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Reads an image's header and applies the size limit, without decoding pixels.

    Args:
        data: The uploaded file.
        max_pixels: Largest accepted width x height.

    Returns:
        Format, mode and size from the header.

    Raises:
        EmptyUploadError: If `data` is empty.
        ImageTooLargeError: If the declared size exceeds `max_pixels`.
        UnsupportedImageError: If the data is not an image in an accepted format.
        CorruptImageError: If the header of an accepted format is damaged.
    """
    with _open(data, max_pixels) as image:
        return _header_info(image, max_pixels)


def _to_sixteen_bit_grey(image: Image.Image) -> np.ndarray:
    # Scaling by 255/65535 maps 16-bit white to 8-bit white exactly; clipping or taking the
    # low byte would wreck the picture.
    values = np.asarray(image).astype(np.float32)
    return np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    if icc_profile:
        from PIL import ImageCms  # only CMYK uploads need littlecms

        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            target = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB")
        except Exception as exc:  # a broken profile should not lose the picture
            logger.info("CMYK colour management failed (%s); converting without profile", exc)
        else:
            if converted is not None:
                return converted
    return image.convert("RGB")


def _target_mode(image: Image.Image) -> str:
    mode = image.mode
    if mode not in _TARGET_MODES:
        raise UnsupportedImageError(f"images with pixel mode {mode} are not supported")
    target = _TARGET_MODES[mode]
    # A palette or a single colour marked transparent (GIF, PNG tRNS) is real transparency.
    if "transparency" in image.info and target in ("L", "RGB"):
        target += "A"
    return target


def icc_colour_space(icc_profile: bytes | None) -> bytes:
    """The colour space an ICC profile describes, from its header (`b"RGB "`, `b"GRAY"`...)."""
    return icc_profile[16:20] if icc_profile else b""


def max_icc_profile_bytes() -> int:
    """The largest ICC profile kept: what Pillow's PNG reader inflates (MAX_TEXT_CHUNK, 1 MiB).

    Read when called, so that a host application raising Pillow's limit raises both the limit
    on PNG uploads and this one together.
    """
    return PngImagePlugin.MAX_TEXT_CHUNK


def embeddable_icc(icc_profile: object) -> bytes | None:
    """The profile when every output format can carry it readably, else None.

    A larger profile in a PNG output gets an iCCP chunk that Pillow refuses to open (and the
    service answers 413 to); the same limit applies to every format, so which format a client
    asks for never decides whether its profile survives.
    """
    if not isinstance(icc_profile, bytes | bytearray) or not icc_profile:
        return None  # absent, or a damaged tag Pillow read as something else
    if len(icc_profile) > max_icc_profile_bytes():
        logger.info("dropping an ICC profile of %d bytes (too large to embed)", len(icc_profile))
        return None
    return bytes(icc_profile)


def _compatible_icc(icc_profile: object, grey: bool) -> bytes | None:
    # A profile only means something for the colour space it was made for; a CMYK profile on
    # the RGB output, say, would make viewers show wrong colours, so it is dropped.
    usable = embeddable_icc(icc_profile)
    fits = icc_colour_space(usable) == (b"GRAY" if grey else b"RGB ")
    return usable if fits else None


def _decode_loaded(image: Image.Image, info: ImageInfo) -> DecodedImage:
    # The whole profile converts CMYK pixels, however large; only the output's is limited.
    icc_profile = image.info.get("icc_profile") or None
    alpha: np.ndarray | None = None
    if image.mode == "I" and info.format != "PNG":
        # Mode I holds 32-bit signed integers. PNG samples are at most 16-bit unsigned (older
        # Pillow versions open 16-bit grey PNGs as I), but a TIFF in mode I stores signed
        # 16-bit or 32-bit samples, which no 0-65535 scaling would render correctly.
        raise UnsupportedImageError(
            f"this {info.format} file has signed or 32-bit integer pixels, which are not "
            "supported; send 8- or 16-bit unsigned images"
        )
    if image.mode in _SIXTEEN_BIT_GREY_MODES:
        grey, luma = True, _to_sixteen_bit_grey(image)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):
            # A 16-bit grey PNG's tRNS names one 16-bit value as transparent; it must be matched
            # before the reduction to 8 bits merges it with its neighbours.
            alpha = np.where(np.asarray(image) == transparent, 0, 255).astype(np.uint8)
    else:
        target = _target_mode(image)
        if image.mode == "CMYK":
            converted = _cmyk_to_rgb(image, icc_profile)
            icc_profile = None  # the pixels are sRGB now
        else:
            converted = image.convert(target) if image.mode != target else image
        pixels = np.asarray(converted)
        grey = target in ("L", "LA")
        if target in ("LA", "RGBA"):
            alpha = np.ascontiguousarray(pixels[..., -1])
            pixels = pixels[..., :-1]
        if grey:
            luma = pixels.reshape(pixels.shape[0], pixels.shape[1])
        else:
            rgb = np.ascontiguousarray(pixels)
    if grey:
        rgb = np.repeat(luma[..., np.newaxis], 3, axis=2)
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        grey=grey,
        icc_profile=_compatible_icc(icc_profile, grey),
        info=info,
    )


def decode_image(data: bytes, *, max_pixels: int, keep_metadata: bool = False) -> DecodedImage:
    """Validates and decodes an uploaded image into arrays for the model.

    The header is checked against `max_pixels` first, then the file structure is verified
    (`Image.verify`, which catches bad PNG checksums among others), then the pixels are decoded
    and the EXIF orientation is applied. Only the first frame of animated or multi-page files is
    used.

    Args:
        data: The uploaded file.
        max_pixels: Largest accepted width x height.
        keep_metadata: Also read the EXIF and XMP, upright (`DecodedImage.metadata`).

    Returns:
        The decoded image.

    Raises:
        EmptyUploadError: If `data` is empty.
        ImageTooLargeError: If the declared size exceeds `max_pixels`.
        UnsupportedImageError: If the format or pixel mode is not supported.
        CorruptImageError: If the file is truncated or damaged.
    """
    with _open(data, max_pixels) as image:
        info = _header_info(image, max_pixels)
        try:
            # verify() reads the whole file structure but leaves the object unusable, so the
            # pixels are decoded from a second, fresh object below.
            image.verify()
        except Exception as exc:
            raise _damaged(exc, info.format) from exc
    if info.format == "WEBP":  # read only once the file's structure is known to be sound
        info = dataclasses.replace(info, webp_quantizer=vp8_quantizer(data))
    with _open(data, max_pixels) as image:
        try:
            image.load()
        except Exception as exc:
            raise _damaged(exc, info.format) from exc
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as exc:  # a damaged EXIF block should not cost the picture
            logger.info("ignoring unreadable EXIF orientation: %s", exc)
        metadata = read_metadata(image) if keep_metadata else None
        try:
            return dataclasses.replace(_decode_loaded(image, info), metadata=metadata)
        except UnsupportedImageError:
            raise
        except Exception as exc:
            raise UnsupportedImageError(
                f"cannot convert pixel mode {image.mode} of this {info.format} file: {exc}"
            ) from exc
