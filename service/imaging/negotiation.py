"""Content negotiation: which output format an `Accept` header asks for.

Follows RFC 9110 section 12.5.1: each format gets the quality (`q`) of the most specific media
range that matches it (`image/webp` beats `image/*` beats `*/*`); the highest quality wins, ties
go to the service's order of preference (PNG, then WebP, then JPEG), and `q=0` rules a format
out. No header, an empty one, `*/*` and `image/*` all mean PNG. Plain string work, no HTTP
framework.

The ranking is kept, not only the winner: WebP and JPEG cannot hold every image the service may
produce (see `service.imaging.encode.MAX_SIDE`), so once the image's size is known
`choose_format_for_size` falls back to the client's next acceptable format.
"""

from __future__ import annotations

import math

from service.exceptions import NotAcceptableError
from service.imaging.encode import MAX_SIDE, OutputFormat

#: Media type of each format, in the order of preference used to break ties.
MEDIA_TYPES: dict[OutputFormat, tuple[str, ...]] = {
    OutputFormat.PNG: ("image/png",),
    OutputFormat.WEBP: ("image/webp",),
    # image/jpg is not registered, but common enough in the wild to accept.
    OutputFormat.JPEG: ("image/jpeg", "image/jpg"),
}


def _parse(header: str) -> list[tuple[str, float]]:
    """The header's media ranges, lower-cased, with their quality (1 when absent or invalid)."""
    ranges = []
    for item in header.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        if not media_range:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 1.0
                # "nan" and "inf" parse as floats but are no more valid than "abc".
                quality = min(max(quality, 0.0), 1.0) if math.isfinite(quality) else 1.0
        ranges.append((media_range.lower(), quality))
    return ranges


def _specificity(media_range: str, media_type: str) -> int:
    """2 for an exact match, 1 for `type/*`, 0 for `*/*`, -1 when the range does not match."""
    if media_range == media_type:
        return 2
    if media_range == media_type.split("/")[0] + "/*":
        return 1
    if media_range == "*/*":
        return 0
    return -1


def _quality(ranges: list[tuple[str, float]], media_types: tuple[str, ...]) -> float:
    best_specificity, best_quality = -1, 0.0
    for media_range, quality in ranges:
        for media_type in media_types:
            specificity = _specificity(media_range, media_type)
            if specificity > best_specificity or (
                specificity == best_specificity and specificity >= 0 and quality > best_quality
            ):
                best_specificity, best_quality = specificity, quality
    return best_quality


def acceptable_formats(accept: str | None) -> tuple[OutputFormat, ...]:
    """Ranks the formats an `Accept` header allows, most wanted first.

    Args:
        accept: The header's value, or None when the request has none.

    Returns:
        Every format with a quality above 0, by falling quality; ties in the service's order of
        preference (PNG, WebP, JPEG).

    Raises:
        NotAcceptableError: When the header rules out every format the service can write.
    """
    if accept is None or not accept.strip():
        return tuple(MEDIA_TYPES)
    ranges = _parse(accept)
    if not ranges:
        return tuple(MEDIA_TYPES)
    scored = [(_quality(ranges, types), fmt) for fmt, types in MEDIA_TYPES.items()]
    # sorted() is stable, so formats of equal quality keep the order of preference.
    ranked = tuple(fmt for quality, fmt in sorted(scored, key=lambda item: -item[0]) if quality > 0)
    if not ranked:
        offered = ", ".join(types[0] for types in MEDIA_TYPES.values())
        raise NotAcceptableError(
            f"cannot answer with any type in Accept: {accept!r}; the service offers {offered}"
        )
    return ranked


def choose_format_for_size(
    formats: tuple[OutputFormat, ...], width: int, height: int
) -> OutputFormat:
    """The most wanted of `formats` that can hold an image of `width` x `height` pixels.

    Checked before the model runs, so a request whose output no acceptable format can hold is
    refused at once instead of after minutes of upscaling.

    Args:
        formats: Acceptable formats, most wanted first (from `acceptable_formats`).
        width: Output width in pixels.
        height: Output height in pixels.

    Returns:
        The chosen format.

    Raises:
        NotAcceptableError: When every acceptable format is too small for the image.
    """
    side = max(width, height)
    for output_format in formats:
        if side <= MAX_SIDE[output_format]:
            return output_format
    limits = ", ".join(
        f"{MEDIA_TYPES[fmt][0]} at most {MAX_SIDE[fmt]} pixels a side" for fmt in formats
    )
    raise NotAcceptableError(
        f"the output, {width}x{height} pixels, is too large for the accepted formats "
        f"({limits}); accept image/png for images this large"
    )
