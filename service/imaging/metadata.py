"""The photo's EXIF and XMP, kept on request (`metadata=keep`) and made true of the output.

By default the service keeps only the ICC profile (`service.imaging.decode`): EXIF and XMP leave,
and with them the camera's GPS position, which is the safe default for images that are shared.
On request they are kept, rewritten for the upscaled picture:

* upright: the pixels were turned upright while decoding, so EXIF's Orientation is 1, and so is
  XMP's `tiff:Orientation` where it has one;
* the output's dimensions: EXIF's PixelXDimension / PixelYDimension (Exif IFD) and, where
  present, ImageWidth / ImageLength; XMP's `exif:PixelXDimension`, `exif:PixelYDimension`,
  `tiff:ImageWidth`, `tiff:ImageLength`;
* what described the input file itself goes: a TIFF's strip, tile and sample layout, and the
  EXIF thumbnail (IFD1: a small copy of the input, sideways when it was rotated). The ICC
  profile is the decoder's, as without this option.

One size limit for every format, JPEG's (a marker segment holds 65533 bytes, its header
included), like the ICC profile's: a larger block, or EXIF that does not parse, is dropped
(and logged), so which format a client asks for never decides what survives.

Pure Pillow and bytes; no HTTP.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from PIL import ExifTags, Image

logger = logging.getLogger(__name__)

#: JPEG's `Exif\0\0` header, which PNG's eXIf chunk and WebP's EXIF chunk leave out.
EXIF_HEADER = b"Exif\x00\x00"
#: Largest EXIF kept (without its header): a JPEG APP1 segment holds 65533 bytes with it.
MAX_EXIF_BYTES = 65533 - len(EXIF_HEADER)
#: Largest XMP packet kept: a JPEG APP1 segment, less XMP's namespace header (29 bytes).
MAX_XMP_BYTES = 65533 - len(b"http://ns.adobe.com/xap/1.0/\x00")

_ORIENTATION = 0x0112
_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
#: IFD0 tags that describe the input file's own layout (TIFF inputs carry them in the same IFD
#: as their EXIF): the output is another file. ICC (34675) and XMP (700) travel on their own.
_FILE_LAYOUT_TAGS = frozenset(
    {258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 338, 339, 513, 514}
    | {530, 700, 34675}
)
_SUB_IFDS = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)


@dataclass(frozen=True)
class Metadata:
    """EXIF (a TIFF structure, without JPEG's `Exif\\0\\0` header) and XMP (an XML packet), each
    None when absent or dropped."""

    exif: bytes | None = None
    xmp: bytes | None = None

    def for_size(self, width: int, height: int) -> Metadata:
        """This metadata for an upright `width` x `height` output, within the size limits."""
        return Metadata(
            _exif_for_size(self.exif, width, height), _xmp_for_size(self.xmp, width, height)
        )


def read_metadata(image: Image.Image) -> Metadata:
    """The EXIF and XMP of an opened image, once `ImageOps.exif_transpose` turned it upright
    (whatever described the input file's layout left out; see the module docstring)."""
    return Metadata(_file_exif(image), _limited(image.info.get("xmp"), MAX_XMP_BYTES, "XMP"))


def _limited(block: object, limit: int, name: str) -> bytes | None:
    if isinstance(block, str):
        block = block.encode()
    if not isinstance(block, bytes | bytearray) or not block:
        return None
    if len(block) > limit:
        logger.info(
            "dropping %s of %d bytes (more than the %d a JPEG holds)", name, len(block), limit
        )
        return None
    return bytes(block)


def _file_exif(image: Image.Image) -> bytes | None:
    try:
        source = image.getexif()
        kept = Image.Exif()
        for tag, value in source.items():
            if tag not in _FILE_LAYOUT_TAGS and tag not in _SUB_IFDS:
                kept[tag] = value
        for tag in _SUB_IFDS:
            ifd = dict(source.get_ifd(tag))
            if ExifTags.IFD.Interop in ifd:  # an offset into the input file: the IFD instead
                ifd[ExifTags.IFD.Interop] = dict(source.get_ifd(ExifTags.IFD.Interop))
            if ifd:
                kept[tag] = ifd
        data = kept.tobytes().removeprefix(EXIF_HEADER) if len(kept) else None
    except Exception as exc:  # damaged EXIF must not cost the picture
        logger.info("dropping unreadable EXIF: %s", exc)
        return None
    return _limited(data, MAX_EXIF_BYTES, "EXIF")


def _exif_for_size(data: bytes | None, width: int, height: int) -> bytes | None:
    if data is None:
        return None
    try:
        exif = Image.Exif()
        exif.load(EXIF_HEADER + data)
        exif[_ORIENTATION] = 1
        if _IMAGE_WIDTH in exif:
            exif[_IMAGE_WIDTH], exif[_IMAGE_LENGTH] = width, height
        if ExifTags.IFD.Exif in exif:
            exif.get_ifd(ExifTags.IFD.Exif).update({_PIXEL_X: width, _PIXEL_Y: height})
        else:
            exif[ExifTags.IFD.Exif] = {_PIXEL_X: width, _PIXEL_Y: height}
        rewritten = exif.tobytes().removeprefix(EXIF_HEADER)
    except Exception as exc:
        logger.info("dropping EXIF that cannot be rewritten: %s", exc)
        return None
    return _limited(rewritten, MAX_EXIF_BYTES, "EXIF")


def _xmp_forms(name: str) -> tuple[re.Pattern[bytes], ...]:
    """`name="6"` (an attribute) and `<name>6</name>` (an element): XMP writers use both."""
    quoted = re.escape(name.encode())
    return (
        re.compile(rb"(?P<open>\b" + quoted + rb'=")[^"]*(?P<close>")'),
        re.compile(rb"(?P<open><" + quoted + rb">)[^<]*(?P<close></" + quoted + rb">)"),
    )


#: The XMP properties rewritten, and what each becomes.
_XMP_PROPERTIES = {
    "tiff:Orientation": "orientation",
    "exif:PixelXDimension": "width",
    "tiff:ImageWidth": "width",
    "exif:PixelYDimension": "height",
    "tiff:ImageLength": "height",
}
_XMP_PATTERNS = [
    (form, which) for name, which in _XMP_PROPERTIES.items() for form in _xmp_forms(name)
]


def _xmp_for_size(xmp: bytes | None, width: int, height: int) -> bytes | None:
    if xmp is None:
        return None
    values = {"orientation": 1, "width": width, "height": height}
    for pattern, which in _XMP_PATTERNS:
        xmp = pattern.sub(rb"\g<open>" + str(values[which]).encode() + rb"\g<close>", xmp)
    return _limited(xmp, MAX_XMP_BYTES, "XMP")
