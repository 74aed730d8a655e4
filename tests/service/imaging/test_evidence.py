"""What an upload shows of its history: JPEG quality, noise, aliasing, hard edges, flat colour."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.core.choice import THRESHOLDS
from service.imaging.decode import decode_image
from service.imaging.evidence import (
    Evidence,
    aliasing_score,
    edge_sharpness,
    flat_share,
    hard_edges,
    jpeg_quality,
    luma,
    noise_sigma,
    spectral_corner,
    webp_quality,
)


def scene(side: int = 512) -> np.ndarray:
    """Smooth shading with sharp-edged discs: a picture whose detail a resize can alias."""
    rows, cols = np.mgrid[0:side, 0:side] / side
    shade = 120 + 60 * np.sin(2 * np.pi * (cols * 1.3 + rows * 0.7)) + 40 * np.cos(4 * np.pi * rows)
    image = Image.fromarray(np.stack([shade, shade * 0.8 + 30, 255 - shade], -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(2)
    for _ in range(12):
        x, y = rng.integers(0, side, 2)
        radius = rng.integers(side // 20, side // 6)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return np.asarray(image)


def drawing(side: int = 64, scale: int = 1) -> np.ndarray:
    """Flat boxes on a flat ground, as a diagram or screenshot is drawn: without
    antialiasing at `scale` 1, at `scale` times the size (the same drawing) otherwise."""
    image = Image.new("RGB", (side * scale, side * scale), (235, 235, 220))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(3)
    for _ in range(10):
        x, y = rng.integers(0, side - 8, 2)
        w, h = rng.integers(6, side // 2, 2)
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        box = [v * scale for v in (x, y, x + w, y + h)]
        draw.rectangle(box, fill=colour)
    return np.asarray(image)


def antialiased_drawing(side: int = 64) -> np.ndarray:
    """Flat discs drawn at 8x and box-reduced, as vector software draws: no edge jumps within
    one pixel, and (for this seed) too few edges look aliased for the aliasing score to fire, so
    that only the flat share tells it is a drawing."""
    fine = side * 8
    image = Image.new("RGB", (fine, fine), (240, 235, 225))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(2)
    for _ in range(8):
        x, y = rng.uniform(0, fine, 2)
        radius = rng.uniform(fine / 12, fine / 4)
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return np.asarray(image.resize((side, side), Image.Resampling.BOX))


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_a_jpegs_quality_is_read_from_its_quantisation_table(quality: int) -> None:
    decoded = decode_image(_jpeg(scene(64), quality), max_pixels=1 << 20)
    assert jpeg_quality(decoded.info.jpeg_luma_table) == quality


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_a_lossy_webps_quality_is_read_from_its_quantiser(quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(scene(256)).save(buffer, "WEBP", quality=quality)
    decoded = decode_image(buffer.getvalue(), max_pixels=1 << 20)
    assert abs(webp_quality(decoded.info.webp_quantizer) - quality) <= 1


def test_other_files_have_no_webp_quality() -> None:
    buffer = io.BytesIO()
    Image.fromarray(scene(64)).save(buffer, "WEBP", lossless=True)
    decoded = decode_image(buffer.getvalue(), max_pixels=1 << 20)
    assert decoded.info.webp_quantizer is None and webp_quality(None) is None


def test_other_files_have_no_jpeg_quality(photo) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo(16, 16)).save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=1 << 20)
    assert decoded.info.jpeg_luma_table is None and jpeg_quality(None) is None


def test_noise_is_measured_on_the_flat_parts_of_the_picture() -> None:
    clean = scene(128).astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 10, clean.shape)
    assert noise_sigma(luma(clean)) < 1.0
    # Grey-level noise of sigma 10 per channel is sigma ~6 on the luma (0.299² + 0.587² + ...).
    assert noise_sigma(luma(np.clip(noisy, 0, 255))) == pytest.approx(6.5, abs=1.0)


def test_a_resize_without_antialiasing_shows_as_aliasing() -> None:
    hr = Image.fromarray(scene())
    smooth = luma(np.asarray(hr.resize((128, 128), Image.Resampling.BICUBIC)))
    aliased = luma(np.asarray(hr.resize((128, 128), Image.Resampling.NEAREST)))
    # Edges over two pixels or more, against a jump within one.
    assert edge_sharpness(smooth) < 0.8 and edge_sharpness(aliased) >= 1.0
    # The spectrum's corner: nearly empty after the antialiasing filter.
    assert spectral_corner(smooth) < -1.5 < -1.0 < spectral_corner(aliased)
    assert aliasing_score(smooth) < 0.75 and aliasing_score(aliased) > 1.0


def test_a_drawing_at_its_own_size_shows_hard_edges() -> None:
    # Its boxes are axis-aligned: the spectrum's corner stays empty, so aliasing misses it.
    y = luma(drawing())
    assert hard_edges(y) > 0.5 and aliasing_score(y) < THRESHOLDS.aliasing


def test_an_antialiased_drawing_shows_no_hard_edges() -> None:
    large = Image.fromarray(drawing(scale=4))
    smooth = np.asarray(large.resize((64, 64), Image.Resampling.BICUBIC))
    assert hard_edges(luma(smooth)) < 0.05


def test_a_photo_resized_without_antialiasing_shows_no_hard_edges() -> None:
    # Its noise leaves no two neighbours equal, even where nearest neighbour keeps a jump.
    grain = np.random.default_rng(1).normal(0, 2, (512, 512, 3))
    photo = np.clip(scene() + grain, 0, 255).astype(np.uint8)
    aliased = np.asarray(Image.fromarray(photo).resize((128, 128), Image.Resampling.NEAREST))
    assert hard_edges(luma(aliased)) < 0.05


def test_a_drawing_is_flat() -> None:
    assert flat_share(luma(antialiased_drawing())) >= THRESHOLDS.flat


def test_a_photo_is_not_flat() -> None:
    grain = np.random.default_rng(1).normal(0, 2, (512, 512, 3))
    photo = np.clip(scene() + grain, 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(photo).resize((128, 128), Image.Resampling.BICUBIC))
    assert flat_share(luma(smooth)) < THRESHOLDS.flat


def test_a_blank_image_is_no_drawing() -> None:
    assert flat_share(luma(np.full((64, 64, 3), 255, np.uint8))) is None


def test_a_picture_without_edges_gives_no_aliasing_score() -> None:
    flat = luma(np.full((64, 64, 3), 128, np.uint8))
    assert edge_sharpness(flat) is None and aliasing_score(flat) is None
    assert hard_edges(flat) is None


def test_images_too_small_to_tell_give_no_measure() -> None:
    evidence = Evidence.measure(np.zeros((2, 2, 3), np.uint8), None)
    assert (evidence.jpeg_quality, evidence.noise, evidence.aliasing) == (None, None, None)
    assert evidence.sharpness is None and evidence.hard_edges is None
    assert evidence.flat is None
    assert Evidence.measure(np.zeros((8, 8, 3), np.uint8), None).aliasing is None


def test_the_evidence_reads_as_one_header_value() -> None:
    evidence = Evidence(
        jpeg_quality=72,
        webp_quality=None,
        noise=3.14,
        sharpness=0.698,
        aliasing=0.714,
        hard_edges=0.004,
        flat=0.1,
    )
    assert evidence.describe() == (
        "jpeg-quality=72; webp-quality=none; noise=3.1; sharpness=0.70; aliasing=0.71; "
        "hard-edges=0.00; flat=0.10"
    )
    nothing = (
        "jpeg-quality=none; webp-quality=none; noise=none; sharpness=none; aliasing=none; "
        "hard-edges=none; flat=none"
    )
    assert Evidence(None, None, None, None, None, None, None).describe() == nothing
