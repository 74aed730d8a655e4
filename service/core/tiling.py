"""Seamless fixed-shape tiling for super-resolution models.

Pure functions on numpy arrays, with no import beyond numpy and the standard library, so the
training package can reuse `upscale_tiled` to evaluate large images without pulling in the
service.

How the image is cut:

* Every tile handed to the model has the same shape (tile_size x tile_size, in batches of
  `batch_size`). On a GPU each new input shape costs a cuDNN algorithm search or a TensorRT engine
  build, so a fixed shape keeps latency flat; it also bounds memory per model call.
* Thin images (strips) would pay for a whole tile in both directions: a 41-row image in square
  tiles is mostly padding (fixed tiles) or cut into many small tiles (fitted ones). A tile that
  is short on one axis therefore grows along the other, keeping its area at most tile_size²
  (the memory and the work of one model call stay those of a square tile). Fixed tiling has a
  short list of such strip shapes (`fixed_tile_shapes`, the ones to warm up on a GPU); fitted
  tiling sizes the strip to the image.
* Along each axis the tile windows step by `tile_size - 2 * overlap`. Neighbouring windows share
  `2 * overlap` pixels and the seam is placed in the middle of that shared strip, so every pixel
  that is kept had at least `overlap` pixels of real context on each inner side. A model whose
  receptive field fits in the overlap reproduces whole-image inference exactly; for the EDSR
  model, whose influence fades within a few LR pixels, an overlap of 8 already keeps every
  output pixel within 1 grey level of whole-image inference (a rounding flip on ~0.1 % of them).
* The last window along an axis is shifted back to end exactly at the image border rather than
  hanging over it. The image border then falls on the tile border, which is what whole-image
  inference sees too, so border pixels match it exactly instead of depending on invented padding.
* Only an axis shorter than the tile must be padded. It is padded at its far end by reflection
  (by repeating the pixel when the axis is one pixel long, where reflection is impossible).
* The result is written tile by tile into a preallocated uint8 array, so peak memory is the
  output plus a few batches of tiles, not a float32 copy of the whole upscaled image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AxisSpan:
    """One tile's extent along one axis, in low-resolution pixels.

    Attributes:
        start: First pixel of the tile window (in the image padded by `pad_to_tile`).
        keep_start: First pixel whose upscaled result this tile contributes to the output.
        keep_end: One past the last contributed pixel. Always within the unpadded image.
    """

    start: int
    keep_start: int
    keep_end: int


@dataclass(frozen=True, slots=True)
class TileSpan:
    """One tile: its row span and its column span."""

    rows: AxisSpan
    cols: AxisSpan


#: Told of the tiles as they are stitched: (output so far, the spans just stitched, tiles in
#: all); see `upscale_tiled`. Jobs report progress and a live preview through it.
TileProgress = Callable[[np.ndarray, Sequence[TileSpan], int], None]


def _check_geometry(tile_size: int, overlap: int) -> None:
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if overlap < 0:
        raise ValueError(f"overlap must not be negative, got {overlap}")
    if tile_size <= 2 * overlap:
        raise ValueError(
            f"tile_size ({tile_size}) must be greater than twice the overlap ({overlap})"
        )


def plan_axis(length: int, tile_size: int, overlap: int) -> list[AxisSpan]:
    """Splits one image axis into fixed-size tile windows and the part of each that is kept.

    Args:
        length: Size of the axis in pixels (at least 1).
        tile_size: Size of every tile window.
        overlap: Minimum context, in pixels, kept around every inner seam on both sides.

    Returns:
        Spans ordered along the axis. Their kept ranges partition `[0, length)`; every window is
        `tile_size` long and lies inside `[0, max(length, tile_size))`.

    Raises:
        ValueError: If the arguments cannot describe a tiling.
    """
    _check_geometry(tile_size, overlap)
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if length <= tile_size:
        return [AxisSpan(start=0, keep_start=0, keep_end=length)]

    stride = tile_size - 2 * overlap
    starts = list(range(0, length - tile_size, stride))
    # The regular stride would overshoot the border, so the final window is pulled back to end
    # exactly at it. It then shares at least 2 * overlap pixels with its predecessor.
    starts.append(length - tile_size)

    # Each seam goes in the middle of the strip two neighbouring windows share, which leaves at
    # least `overlap` pixels of context on both sides of it.
    seams = [
        (next_start + previous_start + tile_size) // 2
        for previous_start, next_start in itertools.pairwise(starts)
    ]
    keep_starts = [0, *seams]
    keep_ends = [*seams, length]
    return [
        AxisSpan(start=start, keep_start=keep_start, keep_end=keep_end)
        for start, keep_start, keep_end in zip(starts, keep_starts, keep_ends, strict=True)
    ]


def fit_window(length: int, tile_size: int, overlap: int) -> int:
    """The window length of `fit` tiling along one axis.

    Fixed tiling runs `tile_size` windows even where a smaller window would do: a 260-pixel axis
    with 256-pixel tiles costs two full windows, 512 pixels of work. Fit tiling keeps the number
    of windows that `tile_size` needs but shrinks them all to the smallest common length that
    still covers the axis with the required overlap (here two windows of 146), and an axis that
    fits in one tile becomes one window of exactly its length, with no padding. The model then
    sees a shape that depends on the image, which costs nothing on CPUs; GPU providers tune
    kernels per shape, so they keep fixed tiles.

    Args:
        length: Size of the axis in pixels (at least 1).
        tile_size: Largest window length.
        overlap: Minimum context kept around every inner seam.

    Returns:
        The window length, at most `tile_size` (and at most `length`).
    """
    _check_geometry(tile_size, overlap)
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if length <= tile_size:
        return length
    stride = tile_size - 2 * overlap
    count = -(-(length - tile_size) // stride) + 1
    # `count` windows of this length, neighbours sharing 2 * overlap pixels, cover the axis.
    window = -(-(length + 2 * overlap * (count - 1)) // count)
    return max(window, 2 * overlap + 1)


#: Fixed tiling's strip shapes: a strip of `ceil(tile_size / d)` pixels across, for each divisor
#: d, and `tile_size² // that` along (so its area is at most tile_size²). An image whose short
#: side fits the thinnest strip that holds it is cut into such strips instead of squares; the
#: issue's 32768 x 41 image at tile_size 192 pads its rows to 48 instead of 192, a 9 x 65535 one
#: its columns to 12. Few divisors, because every shape costs a warm-up on GPU providers.
FIXED_STRIP_DIVISORS: tuple[int, ...] = (16, 4)

#: Longest fitted strip, in tile sizes: long enough that a thin image's seams cost little
#: (2 x overlap per window), short enough that no strip shape needs much more memory than a
#: square tile.
FIT_STRIP_MAX_RATIO = 8


def _oriented(height: int, width: int, across: int, along: int) -> tuple[int, int]:
    """(rows, columns) of a strip `across` x `along` lying along the image's long axis."""
    return (across, along) if height <= width else (along, across)


def _fixed_strip(short: int, tile_size: int) -> tuple[int, int] | None:
    """(across, along) of the thinnest fixed strip holding a short side, or None for squares."""
    for divisor in FIXED_STRIP_DIVISORS:
        across = -(-tile_size // divisor)
        if short <= across < tile_size:
            return across, tile_size * tile_size // across
    return None


def fixed_tile_shapes(tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """Every (rows, columns) shape fixed tiling hands the model: the square, then the strips in
    both orientations. A GPU service warms all of them up so no request pays for a new shape."""
    _check_geometry(tile_size, overlap)
    shapes = [(tile_size, tile_size)]
    for divisor in FIXED_STRIP_DIVISORS:
        strip = _fixed_strip(-(-tile_size // divisor), tile_size)
        if strip is not None:
            for shape in (strip, strip[::-1]):
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def tile_shape(
    height: int, width: int, tile_size: int, overlap: int, *, fit: bool = False
) -> tuple[int, int]:
    """(rows, columns) of every tile of an image.

    Fixed: `tile_size` square, or one of the strips of `fixed_tile_shapes` when the image is
    longer than a tile and its short side fits a strip. Fitted (`fit_window`): an axis longer
    than `tile_size` gets fitted windows of at most `tile_size`; when the short axis fits in one
    window, the long axis may use windows of up to `tile_size² // short side` (at most
    FIT_STRIP_MAX_RATIO tile sizes)
    instead, so a thin image is cut into a few long strips of at most a square tile's area, not
    many small tiles.
    """
    _check_geometry(tile_size, overlap)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    short, long = min(height, width), max(height, width)
    if not fit:
        strip = _fixed_strip(short, tile_size)
        if strip is None or long <= tile_size:  # one square tile holds a small image
            return tile_size, tile_size
        return _oriented(height, width, *strip)
    if short > tile_size:
        return fit_window(height, tile_size, overlap), fit_window(width, tile_size, overlap)
    # Capped at FIT_STRIP_MAX_RATIO tiles along: onnxruntime's CPU provider needed ~220 MB more
    # for one 12288 x 3 tile than for 192 x 192 (measured with the shipped model; 3072 x 3: +4).
    budget = max(tile_size, min(tile_size * tile_size // short, FIT_STRIP_MAX_RATIO * tile_size))
    return _oriented(height, width, short, fit_window(long, budget, overlap))


def _plan_windows(length: int, window: int, overlap: int) -> list[AxisSpan]:
    if length <= window:
        return [AxisSpan(start=0, keep_start=0, keep_end=length)]
    return plan_axis(length, window, overlap)


def plan_tiles(
    height: int, width: int, tile_size: int, overlap: int, *, fit: bool = False
) -> list[TileSpan]:
    """The tiles covering a `height` x `width` image, in row-major order; their kept rectangles
    partition the image. Every tile has the shape `tile_shape` gives for this image."""
    tile_rows, tile_cols = tile_shape(height, width, tile_size, overlap, fit=fit)
    row_spans = _plan_windows(height, tile_rows, overlap)
    col_spans = _plan_windows(width, tile_cols, overlap)
    return [TileSpan(rows=rows, cols=cols) for rows in row_spans for cols in col_spans]


def model_pixels(
    height: int, width: int, tile_size: int, overlap: int, *, fit: bool = False, batch_size: int = 1
) -> int:
    """The pixels the model is handed to upscale a `height` x `width` image: every tile of
    `plan_tiles` (overlap and padding included), in whole batches (a short last batch is
    padded with empty tiles). Model time is about proportional to it."""
    rows, columns = tile_shape(height, width, tile_size, overlap, fit=fit)
    tiles = len(plan_tiles(height, width, tile_size, overlap, fit=fit))
    return -(-tiles // batch_size) * batch_size * rows * columns


def pad_to_tile(image: np.ndarray, tile_size: int | tuple[int, int]) -> np.ndarray:
    """Pads the bottom and right of an image so that both sides are at least `tile_size`.

    Reflection continues the image's texture, which gives the model plausible context next to
    the border; a one-pixel axis cannot be reflected, so its pixel is repeated instead. Axes that
    are already long enough are left alone (and the image is returned as is when neither needs
    padding).

    Args:
        image: Array of shape (H, W, C).
        tile_size: Minimum size of each spatial axis after padding, or (rows, columns).

    Returns:
        The padded array, with the original occupying its top-left corner.
    """
    sizes = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    for axis in (0, 1):
        length = image.shape[axis]
        missing = sizes[axis] - length
        if missing > 0:
            widths = [(0, 0)] * image.ndim
            widths[axis] = (0, missing)
            image = np.pad(image, widths, mode="reflect" if length > 1 else "edge")
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    # The model's output is deliberately not clipped at export, so rounding and clipping to the
    # displayable range happens here, once, on the pixels that are kept. Clipping before rounding
    # gives the same result and lets both steps work in one scratch array.
    scratch = np.clip(values, 0, 255)
    return np.rint(scratch, out=scratch).astype(np.uint8)


def _check_image(image: np.ndarray, scale: int, batch_size: int) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if scale < 1:
        raise ValueError(f"scale must be positive, got {scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _stitch(output: np.ndarray, span: TileSpan, tile: np.ndarray, scale: int) -> None:
    """Writes the kept part of one upscaled tile into the output, rounded to uint8."""
    rows, cols = span.rows, span.cols
    kept = tile[
        (rows.keep_start - rows.start) * scale : (rows.keep_end - rows.start) * scale,
        (cols.keep_start - cols.start) * scale : (cols.keep_end - cols.start) * scale,
    ]
    output[
        rows.keep_start * scale : rows.keep_end * scale,
        cols.keep_start * scale : cols.keep_end * scale,
    ] = _to_uint8(kept)


def _cut_batch(
    padded: np.ndarray, group: Sequence[TileSpan], batch_size: int, shape: tuple[int, int]
) -> np.ndarray:
    """The model's input for `group`: a fresh batch per call, so a model that keeps its input
    never sees it overwritten; the unused slots of a short last batch are zero tiles, so every
    call gets the one shape."""
    rows, cols = shape
    batch = np.zeros((batch_size, rows, cols, 3), dtype=np.float32)
    for index, span in enumerate(group):
        batch[index] = padded[
            span.rows.start : span.rows.start + rows, span.cols.start : span.cols.start + cols
        ]
    return batch


def upscale_tiled(
    image: np.ndarray,
    run_tiles: Callable[[np.ndarray], np.ndarray],
    *,
    scale: int,
    tile_size: int,
    overlap: int,
    batch_size: int = 1,
    fit: bool = False,
    interrupt: Callable[[], None] | None = None,
    progress: TileProgress | None = None,
) -> np.ndarray:
    """Upscales an image of any size by running a model on fixed-shape tiles.

    Args:
        image: RGB image of shape (H, W, 3), uint8 or float32 with values in 0-255.
        run_tiles: The model. It receives a float32 NHWC batch of shape
            (batch_size, rows, columns, 3), the same on every call (the last batch is filled up
            with zero tiles), and must return shape (batch_size, rows * scale, columns * scale,
            3). (rows, columns) is `tile_shape` of this image: tile_size square, or a strip of at
            most tile_size² pixels for a thin image (see `fixed_tile_shapes`); with `fit`, fitted.
        scale: Upscaling factor of the model.
        tile_size: Side of the square tiles, in input pixels (strips: at most its square).
        overlap: Context in input pixels kept around each seam and cropped after upscaling.
        batch_size: Tiles per `run_tiles` call.
        fit: Tiles fitted to this image (`fit_window`) instead of `tile_size` squares.
        interrupt: Called before each model call; whatever it raises abandons the upscale.
        progress: Called with (output, spans, total) once before the first model call (no
            span) and after each batch is stitched (its spans): `output` is the array being
            filled (only the spans' kept regions hold results), `total` the number of tiles.

    Returns:
        The upscaled image, uint8 of shape (H * scale, W * scale, 3), rounded and clipped.

    Raises:
        ValueError: On a malformed image or geometry, or when `run_tiles` returns the wrong shape.
    """
    image = np.asarray(image)
    _check_image(image, scale, batch_size)
    height, width = image.shape[:2]
    tile_rows, tile_cols = tile_shape(height, width, tile_size, overlap, fit=fit)
    spans = plan_tiles(height, width, tile_size, overlap, fit=fit)
    padded = pad_to_tile(image, (tile_rows, tile_cols))
    output = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    expected_shape = (batch_size, tile_rows * scale, tile_cols * scale, 3)
    if progress is not None:
        progress(output, (), len(spans))
    for first in range(0, len(spans), batch_size):
        if interrupt is not None:
            interrupt()
        group = spans[first : first + batch_size]
        batch = _cut_batch(padded, group, batch_size, (tile_rows, tile_cols))
        upscaled = np.asarray(run_tiles(batch))
        if upscaled.shape != expected_shape:
            raise ValueError(
                f"model returned shape {upscaled.shape} for input {batch.shape}; "
                f"expected {expected_shape}"
            )
        for span, tile in zip(group, upscaled, strict=False):
            _stitch(output, span, tile, scale)
        if progress is not None:
            progress(output, group, len(spans))
    return output
