"""Tile planning and stitching: fixed shapes, exact spans, no seams."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.tiling import (
    AxisSpan,
    fit_window,
    fixed_tile_shapes,
    model_pixels,
    pad_to_tile,
    plan_axis,
    plan_tiles,
    tile_shape,
    upscale_tiled,
)
from tests.service.helpers import (
    SCALE,
    batch_runner,
    noise_image,
    to_uint8,
    whole_image_runner,
)

TILE = 16
OVERLAP = 2

# 1x1, 1xN, tile-1, tile, tile+1, non-square and sizes needing several tiles in both directions.
ODD_SIZES = [
    (1, 1),
    (1, 37),
    (37, 1),
    (TILE - 1, TILE - 1),
    (TILE, TILE),
    (TILE + 1, TILE + 1),
    (TILE + 1, 3),
    (23, 50),
    (50, 23),
]


def _kept_coverage(spans: list[AxisSpan], length: int) -> list[int]:
    covered = [0] * length
    for span in spans:
        for index in range(span.keep_start, span.keep_end):
            covered[index] += 1
    return covered


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 30, 31, 100, 101])
def test_plan_axis_kept_ranges_partition_the_axis(length: int) -> None:
    spans = plan_axis(length, TILE, OVERLAP)
    assert _kept_coverage(spans, length) == [1] * length


@pytest.mark.parametrize("length", [17, 30, 31, 100, 101])
def test_plan_axis_windows_have_tile_size_and_stay_inside_the_image(length: int) -> None:
    spans = plan_axis(length, TILE, OVERLAP)
    assert spans[0].start == 0
    assert spans[-1].start + TILE == length
    assert all(0 <= span.start <= length - TILE for span in spans)


@pytest.mark.parametrize("length", [17, 30, 31, 100, 101])
def test_plan_axis_keeps_overlap_context_around_inner_seams(length: int) -> None:
    spans = plan_axis(length, TILE, OVERLAP)
    for left, right in itertools.pairwise(spans):
        assert left.keep_end == right.keep_start
        assert left.start + TILE - left.keep_end >= OVERLAP
        assert right.keep_start - right.start >= OVERLAP


def test_plan_axis_known_spans() -> None:
    # Stride 12: windows at 0, 12, then the last one pulled back to end at 30.
    assert plan_axis(30, TILE, OVERLAP) == [
        AxisSpan(start=0, keep_start=0, keep_end=14),
        AxisSpan(start=12, keep_start=14, keep_end=21),
        AxisSpan(start=14, keep_start=21, keep_end=30),
    ]


def test_plan_axis_short_axis_is_one_window() -> None:
    assert plan_axis(5, TILE, OVERLAP) == [AxisSpan(start=0, keep_start=0, keep_end=5)]


@pytest.mark.parametrize(("tile_size", "overlap"), [(0, 0), (8, -1), (8, 4), (8, 5)], ids=str)
def test_plan_axis_rejects_impossible_geometry(tile_size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"tile_size|overlap"):
        plan_axis(10, tile_size, overlap)


def test_plan_tiles_is_row_major_product_of_axes() -> None:
    tiles = plan_tiles(30, 17, TILE, OVERLAP)
    assert len(tiles) == len(plan_axis(30, TILE, OVERLAP)) * len(plan_axis(17, TILE, OVERLAP))
    assert [tile.rows.start for tile in tiles] == [0, 0, 12, 12, 14, 14]


def test_pad_to_tile_reflects_short_axes() -> None:
    image = np.arange(3 * 2 * 1).reshape(3, 2, 1)
    padded = pad_to_tile(image, 5)
    assert padded.shape == (5, 5, 1)
    assert padded[:, 0, 0].tolist() == [0, 2, 4, 2, 0]
    assert padded[0, :, 0].tolist() == [0, 1, 0, 1, 0]


def test_pad_to_tile_repeats_a_single_pixel() -> None:
    padded = pad_to_tile(np.full((1, 1, 3), 7), 4)
    assert padded.shape == (4, 4, 3)
    assert (padded == 7).all()


def test_pad_to_tile_leaves_large_images_alone() -> None:
    image = np.zeros((20, 30, 3))
    assert pad_to_tile(image, TILE) is image


@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_model_call_gets_the_same_fixed_shape(batch_size: int) -> None:
    shapes = []

    def fake_model(batch: np.ndarray) -> np.ndarray:
        shapes.append((batch.shape, batch.dtype))
        return np.repeat(np.repeat(batch, SCALE, axis=1), SCALE, axis=2)

    upscale_tiled(
        noise_image(45, 31),
        fake_model,
        scale=SCALE,
        tile_size=TILE,
        overlap=OVERLAP,
        batch_size=batch_size,
    )
    assert len(shapes) > 1
    assert set(shapes) == {((batch_size, TILE, TILE, 3), np.dtype(np.float32))}


@pytest.mark.parametrize("fit", [True, False], ids=["fit", "fixed"])
@pytest.mark.parametrize(("height", "width", "batch_size"), [(45, 31, 1), (45, 31, 3), (7, 90, 2)])
def test_model_pixels_are_the_pixels_the_model_is_handed(
    fit: bool, height: int, width: int, batch_size: int
) -> None:
    handed = []

    def fake_model(batch: np.ndarray) -> np.ndarray:
        handed.append(batch.shape[0] * batch.shape[1] * batch.shape[2])
        return np.repeat(np.repeat(batch, SCALE, axis=1), SCALE, axis=2)

    upscale_tiled(
        noise_image(height, width),
        fake_model,
        scale=SCALE,
        tile_size=TILE,
        overlap=OVERLAP,
        batch_size=batch_size,
        fit=fit,
    )
    expected = model_pixels(height, width, TILE, OVERLAP, fit=fit, batch_size=batch_size)
    assert sum(handed) == expected


def test_nearest_neighbour_model_gives_exact_nearest_upscale() -> None:
    image = noise_image(23, 50)

    def nearest(batch: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(batch, SCALE, axis=1), SCALE, axis=2)

    result = upscale_tiled(image, nearest, scale=SCALE, tile_size=TILE, overlap=OVERLAP)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, np.repeat(np.repeat(image, SCALE, 0), SCALE, 1))


def test_output_is_rounded_and_clipped() -> None:
    def out_of_range(batch: np.ndarray) -> np.ndarray:
        values = np.repeat(np.repeat(batch, SCALE, axis=1), SCALE, axis=2)
        return values * 2 - 100.4

    image = np.array([[[0, 60, 200]]], dtype=np.uint8)
    result = upscale_tiled(image, out_of_range, scale=SCALE, tile_size=8, overlap=1)
    assert result.shape == (4, 4, 3)
    assert result[0, 0].tolist() == [0, 20, 255]


def test_wrong_model_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="expected"):
        upscale_tiled(noise_image(5, 5), lambda batch: batch, scale=SCALE, tile_size=8, overlap=1)


def test_rejects_non_rgb_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        upscale_tiled(np.zeros((4, 4)), lambda b: b, scale=SCALE, tile_size=8, overlap=1)


def _reference(model_path: Path, image: np.ndarray) -> np.ndarray:
    """Whole-image inference on the image padded as the tiler pads short axes, then cropped.

    For images at least one tile large in both directions this is plain whole-image inference.
    """
    height, width = image.shape[:2]
    padded = pad_to_tile(image, tile_shape(height, width, TILE, 1))  # a square, or a strip
    upscaled = whole_image_runner(model_path)(padded)
    return to_uint8(upscaled[: height * SCALE, : width * SCALE])


@pytest.mark.parametrize(("height", "width"), ODD_SIZES, ids=str)
def test_local_model_tiles_match_whole_image_exactly(
    conv_model_path: Path, height: int, width: int
) -> None:
    image = noise_image(height, width)
    tiled = upscale_tiled(
        image, batch_runner(conv_model_path), scale=SCALE, tile_size=TILE, overlap=1, batch_size=2
    )
    assert tiled.shape == (height * SCALE, width * SCALE, 3)
    difference = np.abs(tiled.astype(int) - _reference(conv_model_path, image))
    assert difference.max() <= 1


@pytest.mark.parametrize(("height", "width"), [(1, 37), (TILE + 1, TILE + 1), (50, 23)], ids=str)
def test_wide_receptive_field_model_is_seamless_with_enough_overlap(
    deep_model_path: Path, height: int, width: int
) -> None:
    image = noise_image(height, width, seed=3)
    tiled = upscale_tiled(
        image, batch_runner(deep_model_path), scale=SCALE, tile_size=TILE, overlap=7
    )
    difference = np.abs(tiled.astype(int) - _reference(deep_model_path, image))
    assert difference.max() <= 1


def test_too_little_overlap_shows_seams(deep_model_path: Path) -> None:
    # The control for the test above: it proves the comparison can detect seams at all.
    image = noise_image(50, 23, seed=3)
    tiled = upscale_tiled(
        image, batch_runner(deep_model_path), scale=SCALE, tile_size=TILE, overlap=0
    )
    difference = np.abs(tiled.astype(int) - _reference(deep_model_path, image))
    assert difference.max() > 2


def test_real_sized_image_matches_whole_image_inference(deep_model_path: Path) -> None:
    image = noise_image(200, 300, seed=5)
    tiled = upscale_tiled(
        image, batch_runner(deep_model_path), scale=SCALE, tile_size=64, overlap=8, batch_size=4
    )
    whole = to_uint8(whole_image_runner(deep_model_path)(image))
    difference = np.abs(tiled.astype(int) - whole)
    assert difference.max() <= 2
    assert difference.mean() <= 0.05


def test_float_input_is_accepted(conv_model_path: Path) -> None:
    image = noise_image(20, 20)
    runner = batch_runner(conv_model_path)
    from_uint8 = upscale_tiled(image, runner, scale=SCALE, tile_size=TILE, overlap=1)
    from_float = upscale_tiled(
        image.astype(np.float32), runner, scale=SCALE, tile_size=TILE, overlap=1
    )
    np.testing.assert_array_equal(from_uint8, from_float)


# --- Fitted tiles and the asynchronous tiler -----------------------------------------------------


@pytest.mark.parametrize("length", [1, 5, 16, 17, 30, 31, 57, 100, 101, 257])
@pytest.mark.parametrize(("tile_size", "overlap"), [(16, 2), (16, 4), (24, 0)])
def test_fit_window_needs_no_more_windows_than_fixed_tiles(
    length: int, tile_size: int, overlap: int
) -> None:
    window = fit_window(length, tile_size, overlap)
    assert window <= min(tile_size, length) or window == 2 * overlap + 1
    # A square image: both axes are fitted to tile_size, neither grows into a strip.
    rows = [span.rows for span in plan_tiles(length, length, tile_size, overlap, fit=True)]
    fitted = sorted({(span.start, span.keep_start, span.keep_end) for span in rows})
    assert len(fitted) == len(plan_axis(length, tile_size, overlap))
    assert _kept_coverage([AxisSpan(*span) for span in fitted], length) == [1] * length
    assert all(0 <= start <= length - min(window, length) for start, _, _ in fitted)


def test_fit_window_known_values() -> None:
    assert fit_window(260, 256, 16) == 146  # two windows sharing 32 pixels: 2 * 146 - 32 = 260
    assert fit_window(100, 256, 16) == 100  # one window, the axis itself: no padding
    assert tile_shape(300, 300, 256, 16, fit=True) == (166, 166)
    # A short side within one tile lets the long one grow: 260 x 100 is one tile, no seam.
    assert tile_shape(260, 100, 256, 16, fit=True) == (260, 100)
    assert tile_shape(260, 100, 256, 16) == (256, 256)


@pytest.mark.parametrize(("height", "width"), ODD_SIZES)
def test_fitted_tiles_match_whole_image_exactly(
    conv_model_path: Path, height: int, width: int
) -> None:
    image = noise_image(height, width, seed=height * 100 + width)
    expected = to_uint8(whole_image_runner(conv_model_path)(image))
    tiled = upscale_tiled(
        image, batch_runner(conv_model_path), scale=SCALE, tile_size=TILE, overlap=1, fit=True
    )
    np.testing.assert_array_equal(tiled, expected)


def batch_shapes(image: np.ndarray, **tiling: Any) -> set[tuple[int, ...]]:
    """Every batch shape `upscale_tiled` hands the model for `image` (the output is blank)."""
    shapes = set()

    def record(batch: np.ndarray) -> np.ndarray:
        shapes.add(batch.shape)
        return np.zeros((batch.shape[0], batch.shape[1] * SCALE, batch.shape[2] * SCALE, 3))

    upscale_tiled(image, record, scale=SCALE, tile_size=TILE, **tiling)
    return shapes


def test_fitted_tiles_have_one_shape_per_image() -> None:
    rows, cols = tile_shape(50, 23, TILE, 2, fit=True)
    assert batch_shapes(noise_image(50, 23), overlap=2, fit=True) == {(1, rows, cols, 3)}


class _AbandonedError(Exception):
    pass


def test_interrupt_abandons_the_upscale_between_model_calls() -> None:
    # 40x40 needs nine 16-pixel tiles; the interrupt fires once two calls have run.
    calls = []

    def model(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return tiles.repeat(SCALE, axis=1).repeat(SCALE, axis=2)

    def interrupt() -> None:
        if len(calls) >= 2:
            raise _AbandonedError

    with pytest.raises(_AbandonedError):
        upscale_tiled(
            noise_image(40, 40),
            model,
            scale=SCALE,
            tile_size=TILE,
            overlap=OVERLAP,
            interrupt=interrupt,
        )
    assert len(calls) == 2


# --- Thin images: strips instead of squares ------------------------------------------------------


@pytest.mark.parametrize("fit", [True, False], ids=["fit", "fixed"])
@pytest.mark.parametrize(("height", "width"), [(41, 32768), (32768, 41), (65535, 9), (9, 65535)])
def test_thin_images_cost_about_what_square_ones_do_per_pixel(
    fit: bool, height: int, width: int
) -> None:
    # The model's work is the pixels it is handed. Before strips, a 41-row image padded to
    # 192-row fixed tiles computed 4.7 times its pixels (and 21 times for 9 columns); fitted tiles
    # cut it into 186 small tiles of 41 x 192, paying the overlap and a model call for each.
    square = model_pixels(2048, 2048, 192, 8, fit=fit) / 2048**2
    thin = model_pixels(height, width, 192, 8, fit=fit) / (height * width)
    assert thin <= 1.3 * square
    assert len(plan_tiles(height, width, 192, 8, fit=fit)) <= 45


def test_known_strip_plans() -> None:
    # Fitted: the long axis takes windows of up to tile_size² // 41 = 899 pixels.
    assert tile_shape(41, 32768, 192, 8, fit=True) == (41, 878)
    assert len(plan_tiles(41, 32768, 192, 8, fit=True)) == 38
    # ... capped at FIT_STRIP_MAX_RATIO tiles along: 9 columns get windows of at most 1536 rows.
    rows, columns = tile_shape(65535, 9, 192, 8, fit=True)
    assert columns == 9 and 1400 < rows <= 1536
    # Fixed: the thinnest strip holding the short side, 48 x 768 or 12 x 3072.
    assert tile_shape(41, 32768, 192, 8) == (48, 768)
    assert tile_shape(65535, 9, 192, 8) == (3072, 12)
    # A short side past tile_size / 4, or an image that one square tile holds, keeps squares.
    assert tile_shape(49, 32768, 192, 8) == (192, 192)
    assert tile_shape(9, 100, 192, 8) == (192, 192)
    assert tile_shape(100, 9, 192, 8, fit=True) == (100, 9)


def test_fitted_strips_stay_within_a_square_tiles_area() -> None:
    for short in (1, 2, 5, 9, 16, 41, 100, 191, 192):
        for long in (193, 1000, 40_000):
            rows, cols = tile_shape(short, long, 192, 8, fit=True)
            assert rows == short
            assert cols <= max(192, min(192 * 192 // short, 16 * 192))
            assert tile_shape(long, short, 192, 8, fit=True) == (cols, rows)


def test_fixed_tile_shapes_lists_every_shape_fixed_tiling_uses() -> None:
    shapes = fixed_tile_shapes(192, 8)
    assert shapes == [(192, 192), (12, 3072), (3072, 12), (48, 768), (768, 48)]
    assert all(rows * cols <= 192 * 192 for rows, cols in shapes)
    used = {
        tile_shape(height, width, 192, 8)
        for height in (1, 9, 12, 13, 41, 48, 49, 192, 5000)
        for width in (1, 9, 12, 13, 41, 48, 49, 192, 5000)
    }
    assert used <= set(shapes)


@pytest.mark.parametrize("fit", [True, False], ids=["fit", "fixed"])
@pytest.mark.parametrize(("height", "width"), [(3, 150), (150, 3), (1, 300), (5, 40), (2, 17)])
def test_strips_match_whole_image_exactly(
    conv_model_path: Path, fit: bool, height: int, width: int
) -> None:
    # Fitted strips are the image itself across; fixed ones pad it across to the strip's width.
    image = noise_image(height, width, seed=height * 1000 + width)
    if fit:
        expected = to_uint8(whole_image_runner(conv_model_path)(image))
    else:
        expected = _reference(conv_model_path, image)
    tiled = upscale_tiled(
        image, batch_runner(conv_model_path), scale=SCALE, tile_size=TILE, overlap=1, fit=fit
    )
    np.testing.assert_array_equal(tiled, expected)


def test_strip_calls_all_get_the_strip_shape() -> None:
    assert batch_shapes(noise_image(3, 300), overlap=2, batch_size=2) == {(2, 4, 64, 3)}
