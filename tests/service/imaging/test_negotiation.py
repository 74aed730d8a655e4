"""Accept header -> output format, per RFC 9110's rules."""

from __future__ import annotations

import pytest

from service.exceptions import NotAcceptableError
from service.imaging.encode import OutputFormat
from service.imaging.negotiation import acceptable_formats, choose_format_for_size

PNG, WEBP, JPEG = OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.JPEG


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, PNG),
        ("", PNG),
        ("*/*", PNG),
        ("image/*", PNG),
        ("image/png", PNG),
        ("image/webp", WEBP),
        ("IMAGE/WEBP", WEBP),
        ("image/jpeg", JPEG),
        ("image/jpg", JPEG),
        ("image/jpeg;q=0.9, image/webp", WEBP),
        ("image/webp;q=0.5, image/jpeg;q=0.8", JPEG),
        ("image/avif,image/webp,*/*;q=0.8", WEBP),  # a browser's image Accept
        ("text/html, */*;q=0.1", PNG),
        ("image/png;q=0, */*", WEBP),  # PNG ruled out, the next preference wins
        ("image/*;q=0.5, image/jpeg", JPEG),
        ("image/webp;q=1, image/png;q=1", PNG),  # a tie goes to the service's preference
        ("image/webp; q=abc", WEBP),  # an unreadable q counts as 1
        ("image/webp;q=nan", WEBP),  # so does one that is not a finite number
        ("image/jpeg;q=inf, image/png;q=0.5", JPEG),
        (" , ", PNG),
    ],
)
def test_negotiates(accept: str | None, expected: OutputFormat) -> None:
    assert acceptable_formats(accept)[0] is expected


@pytest.mark.parametrize(
    "accept", ["application/json", "image/gif", "text/*", "image/*;q=0", "*/*;q=0, image/bmp"]
)
def test_nothing_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptableError, match="image/png, image/webp, image/jpeg"):
        acceptable_formats(accept)


def test_specific_range_overrides_a_wildcard() -> None:
    # */* allows everything, but the explicit q=0 for JPEG still rules JPEG out.
    assert acceptable_formats("image/jpeg;q=0, image/png;q=0, */*") == (WEBP,)


def test_formats_are_ranked_by_quality_then_preference() -> None:
    assert acceptable_formats(None) == (PNG, WEBP, JPEG)
    assert acceptable_formats("image/jpeg, image/webp;q=0.5") == (JPEG, WEBP)
    assert acceptable_formats("image/webp, */*;q=0.1") == (WEBP, PNG, JPEG)


def test_an_output_too_large_for_the_first_choice_falls_back_to_the_next() -> None:
    formats = acceptable_formats("image/webp, image/png;q=0.5")
    assert choose_format_for_size(formats, 16383, 100) is WEBP
    assert choose_format_for_size(formats, 16384, 100) is PNG
    assert choose_format_for_size((JPEG,), 100, 65500) is JPEG


@pytest.mark.parametrize(("formats", "side"), [((WEBP,), 16384), ((JPEG, WEBP), 65501)])
def test_an_output_too_large_for_every_accepted_format_is_not_acceptable(
    formats: tuple[OutputFormat, ...], side: int
) -> None:
    with pytest.raises(NotAcceptableError, match="too large for the accepted formats"):
        choose_format_for_size(formats, side, 4)
