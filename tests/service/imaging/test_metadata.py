"""EXIF and XMP kept on request (`metadata=keep`): read upright, made true of the output,
written by every encoder, within JPEG's limits."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image

from service.imaging.decode import decode_image
from service.imaging.encode import EncodeOptions, OutputFormat, PngEncoder, encode_output
from service.imaging.metadata import MAX_EXIF_BYTES, MAX_XMP_BYTES, Metadata
from tests.service.helpers import encode, noise_image

LIMIT = 10_000
GPS = {1: "N", 2: (48.0, 51.0, 24.0)}
#: XMP with both forms XMP writers use: attributes and elements.
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6" '
    b'exif:PixelXDimension="6" exif:PixelYDimension="4"><tiff:ImageWidth>6</tiff:ImageWidth>'
    b"<dc:creator>Ada</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
)


def _camera_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.ExifImageWidth: 6, ExifTags.Base.ExifImageHeight: 4}
    exif[ExifTags.IFD.GPSInfo] = GPS
    return exif


def _photo(image_format: str = "JPEG", **options: object) -> bytes:
    """A 6 x 4 photo whose EXIF says to turn it a quarter (orientation 6): upright, 4 x 6."""
    exif = options.pop("exif", _camera_exif())
    return encode(Image.fromarray(noise_image(4, 6)), image_format, exif=exif.tobytes(), **options)


def _exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_kept_exif_is_upright_with_the_outputs_size_and_the_rest_unchanged(
    image_format: str,
) -> None:
    decoded = decode_image(_photo(image_format), max_pixels=LIMIT, keep_metadata=True)
    assert (decoded.width, decoded.height) == (4, 6)
    exif = _exif(decoded.metadata.for_size(16, 24).exif)
    assert exif[ExifTags.Base.Orientation] == 1
    sizes = exif.get_ifd(ExifTags.IFD.Exif)
    assert (sizes[ExifTags.Base.ExifImageWidth], sizes[ExifTags.Base.ExifImageHeight]) == (16, 24)
    assert exif[ExifTags.Base.Make] == "Canon"
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == GPS


def test_the_layout_of_a_tiff_input_is_not_carried_over() -> None:
    decoded = decode_image(_photo("TIFF"), max_pixels=LIMIT, keep_metadata=True)
    exif = _exif(decoded.metadata.for_size(16, 24).exif)
    strips = (ExifTags.Base.StripOffsets, ExifTags.Base.StripByteCounts, ExifTags.Base.Compression)
    assert not set(strips) & set(exif)
    assert (exif[ExifTags.Base.ImageWidth], exif[ExifTags.Base.ImageLength]) == (16, 24)


def test_kept_xmp_is_upright_with_the_outputs_size() -> None:
    decoded = decode_image(_photo(xmp=XMP), max_pixels=LIMIT, keep_metadata=True)
    xmp = decoded.metadata.for_size(16, 24).xmp
    assert b'exif:PixelXDimension="16"' in xmp and b'exif:PixelYDimension="24"' in xmp
    assert b"<tiff:ImageWidth>16</tiff:ImageWidth>" in xmp
    assert b"tiff:Orientation=" not in xmp or b'tiff:Orientation="1"' in xmp
    assert b"<dc:creator>Ada</dc:creator>" in xmp


def test_by_default_nothing_is_read() -> None:
    assert decode_image(_photo(xmp=XMP), max_pixels=LIMIT).metadata is None


def test_unreadable_exif_is_dropped_and_the_picture_kept() -> None:
    image = Image.fromarray(noise_image(4, 6))
    data = encode(image, "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 40)
    decoded = decode_image(data, max_pixels=LIMIT, keep_metadata=True)
    assert decoded.metadata.exif is None and decoded.rgb.shape == (4, 6, 3)


def test_blocks_over_jpegs_limits_are_dropped_whatever_the_format() -> None:
    exif = _camera_exif(orientation=1)
    exif[ExifTags.Base.ImageDescription] = "x" * (MAX_EXIF_BYTES + 1)
    xmp = b"<x:xmpmeta>" + b" " * MAX_XMP_BYTES + b"</x:xmpmeta>"
    decoded = decode_image(_photo("PNG", exif=exif), max_pixels=LIMIT, keep_metadata=True)
    assert decoded.metadata.exif is None
    assert Metadata(xmp=xmp).for_size(4, 4).xmp is None


@pytest.mark.parametrize(
    ("output_format", "encoder"),
    [
        (OutputFormat.PNG, PngEncoder.STRIPS),
        (OutputFormat.PNG, PngEncoder.PILLOW),
        (OutputFormat.WEBP, PngEncoder.STRIPS),
        (OutputFormat.JPEG, PngEncoder.STRIPS),
    ],
    ids=["png-strips", "png-pillow", "webp", "jpeg"],
)
def test_every_encoder_writes_what_pillow_reads_back(
    output_format: OutputFormat, encoder: PngEncoder
) -> None:
    metadata = Metadata(_camera_exif(orientation=1).tobytes()[6:], XMP).for_size(6, 4)
    options = EncodeOptions(png_encoder=encoder)
    data = encode_output(noise_image(4, 6), output_format, options, metadata=metadata)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo) == GPS
        assert image.info["xmp"] == metadata.xmp
