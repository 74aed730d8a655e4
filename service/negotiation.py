"""Content negotiation: which output format an `Accept` header asks for.

Follows RFC 9110 section 12.5.1: each format gets the quality (`q`) of the most specific media
range that matches it (`image/webp` beats `image/*` beats `*/*`); the highest quality wins, ties
go to the service's order of preference (PNG, then WebP, then JPEG), and `q=0` rules a format
out. No header, an empty one, `*/*` and `image/*` all mean PNG. Plain string work, no HTTP
framework.
"""

from __future__ import annotations

from service.encoding import OutputFormat
from service.exceptions import NotAcceptableError

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
                    quality = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    quality = 1.0
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


def negotiate_format(accept: str | None) -> OutputFormat:
    """Chooses the output format for an `Accept` header.

    Args:
        accept: The header's value, or None when the request has none.

    Returns:
        The format to answer with.

    Raises:
        NotAcceptableError: When the header rules out every format the service can write.
    """
    if accept is None or not accept.strip():
        return OutputFormat.PNG
    ranges = _parse(accept)
    if not ranges:
        return OutputFormat.PNG
    scored = [(_quality(ranges, types), fmt) for fmt, types in MEDIA_TYPES.items()]
    quality, chosen = max(scored, key=lambda item: item[0])  # max keeps the first of equals
    if quality <= 0:
        offered = ", ".join(types[0] for types in MEDIA_TYPES.values())
        raise NotAcceptableError(
            f"cannot answer with any type in Accept: {accept!r}; the service offers {offered}"
        )
    return chosen
