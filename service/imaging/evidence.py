"""What an upload shows of its history: JPEG or WebP compression, noise, aliasing, hard edges
and flat colour, measured from the file and its pixels, for choosing a model
(`service.core.choice`).

- **JPEG quality** from the file's luminance quantisation table (Pillow's `quantization`, in
  natural order), compared with the IJG standard table scaled to each quality 1-100: the
  closest one. Encoders with tables of their own (phones) land on the quality whose table is
  nearest, which is what matters here: how coarsely the picture was quantised.
- **WebP quality** of a lossy WebP file, likewise: its largest segment quantiser
  (`service.imaging.webp`) against the one libwebp's default settings give each quality. Its
  spatial noise shaping quantises a photograph's smoothest segment most, which that table
  assumes (within 1 of the saved quality on most photographs). A picture whose segments differ
  little reads higher, and one with a single segment (16 pixels or less a side, or an encoder
  set to one segment or no noise shaping) much higher: quality 50 as 67, 75 as 81.
- **Noise**: Immerkær's fast estimate (1996) of the standard deviation of Gaussian noise on the
  luma, taken only where the gradient is in its lowest fifth: on texture and edges the
  Laplacian-difference mask answers to the picture, not the noise.
- **Aliasing**: a downscale without antialiasing (OpenCV's resizers, nearest neighbour) samples
  the picture instead of averaging it: edges jump within one pixel, and detail above the new
  Nyquist frequency folds back into the picture. An antialiased resize (Pillow's, a camera's)
  spreads every edge over two pixels or more, and leaves the spectrum's corner near Nyquist in
  both directions nearly empty (its separable filter attenuates each axis). The score is the
  median sharpness of the strongest edges (`edge_sharpness`), nudged by the log of the
  spectrum's corner power over its power near Nyquist along the axes (`spectral_corner`, with a
  Hann window that keeps the picture's borders out); the weight was fitted on training images.
- **Hard edges**: a drawing at its own size (a screenshot, a diagram, pixel art) was rendered
  without antialiasing, so its edges jump straight from one flat run of pixels to another. A
  downscaled photograph does not show that (its noise and any resampling leave neighbours
  unequal), but one enlarged with nearest neighbour does, and is treated alike; a drawing whose
  lines are mostly horizontal and vertical can score low on aliasing, as its spectrum's corner
  stays empty. A lossy re-encode hides the measure (a JPEG of 90 or less is found as JPEG).
- **Flat colour**: the share of neighbouring pixels whose luma is exactly equal. A drawing
  (a chart, a slide, a screenshot), antialiased or not, is mostly flat fills: 0.78 or more. A
  photograph's noise and texture leave few neighbours equal (0.50 at most, unless a strong JPEG
  has flattened it). A JPEG's rounding, even at quality 91 or more, leaves few neighbours
  exactly equal in a drawing too; what tells it then is the noise: none at all on the flattest
  fifth of a drawing, where a photograph keeps its grain (`service.core.choice.Thresholds`).

The measures take a few milliseconds on a 256² image (the model card gives the measured cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.imaging.decode import DecodedImage

#: The IJG standard luminance quantisation table (JPEG Annex K), in natural order.
_IJG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
#: Fraction of pixels, smoothest first, that the noise estimate looks at.
_SMOOTHEST_SHARE = 0.2
#: Images smaller than this a side give no spectrum, nor share of flat neighbours, worth reading.
_MIN_SIDE = 16
#: The side of the central crop the evidence is read from.
_MAX_SIDE = 1024
#: Edges: the smallest step that counts (grey levels), and how many make a reading.
_MIN_EDGE_STEP = 8.0
_MIN_EDGES = 20
#: The aliasing score: edge sharpness + weight x (spectral corner - centre).
_CORNER_WEIGHT = 0.15
_CORNER_CENTRE = -1.5


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_table(quality) for quality in range(1, 101)])


def _libwebp_quantizer(quality: int) -> int:
    """The quantiser libwebp gives the segment it quantises most at this quality (its
    `QualityToCompression`, then the spatial noise shaping of strength 50 at the segment's
    extreme complexity): 36 at quality 75, 12 at 90."""
    linear = quality / 100 * 2 / 3 if quality < 75 else 2 * quality / 100 - 1
    noise_shaping = 1 + 0.9 * 50 / 100 / 128 * 127
    return int(127 * (1 - (linear ** (1 / 3)) ** noise_shaping))


_LIBWEBP_QUANTIZERS = np.array([_libwebp_quantizer(quality) for quality in range(1, 101)])


def webp_quality(quantizer: int | None) -> int | None:
    """The libwebp quality (1-100) whose largest segment quantiser is closest to a lossy WebP
    file's (`service.imaging.webp.vp8_quantizer`); None for other files."""
    if quantizer is None:
        return None
    # Neighbouring qualities can share a quantiser: the highest of them (75 and 74 read 75).
    distances = np.abs(_LIBWEBP_QUANTIZERS - quantizer)[::-1]
    return len(distances) - int(np.argmin(distances))


def jpeg_quality(luma_table: Sequence[int] | None) -> int | None:
    """The IJG quality (1-100) whose luminance table is closest to the file's (64 values in
    natural order); None without one (not a JPEG) or for an unusable one."""
    if luma_table is None or len(luma_table) != 64:
        return None
    distances = np.abs(_IJG_TABLES - np.asarray(luma_table, dtype=np.int64)).sum(axis=1)
    return int(np.argmin(distances)) + 1


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image, float64 in 0-255."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def noise_sigma(y: np.ndarray) -> float | None:
    """Immerkær's estimate of the Gaussian noise's standard deviation (0-255) on the flattest
    fifth of the image (see the module docstring); None for images under 3 pixels a side."""
    if min(y.shape) < 3:
        return None
    centre = y[1:-1, 1:-1]
    laplacian_difference = (
        y[:-2, :-2]
        - 2 * y[:-2, 1:-1]
        + y[:-2, 2:]
        - 2 * y[1:-1, :-2]
        + 4 * centre
        - 2 * y[1:-1, 2:]
        + y[2:, :-2]
        - 2 * y[2:, 1:-1]
        + y[2:, 2:]
    )
    gradient = np.hypot(y[1:-1, 2:] - y[1:-1, :-2], y[2:, 1:-1] - y[:-2, 1:-1])
    flat = gradient <= np.quantile(gradient, _SMOOTHEST_SHARE)
    return float(math.sqrt(math.pi / 2) / 6 * np.abs(laplacian_difference[flat]).mean())


def edge_sharpness(y: np.ndarray) -> float | None:
    """The median, over the strongest edges (the top 2 % of gradient peaks, steps of at least 8
    grey levels), of the largest one-pixel step over the whole step across four pixels, along
    rows and columns: about 0.6-0.8 for an antialiased resize (an edge spans two pixels or
    more), 1 and above without antialiasing (a jump within one pixel, ringing past it); None
    with fewer than 20 such edges."""
    if min(y.shape) < 4:
        return None
    ratios = []
    for image in (y, y.T):
        steps = np.abs(np.diff(image, axis=1))
        inner = steps[:, 1:-1]
        peaks = (inner >= steps[:, :-2]) & (inner >= steps[:, 2:])
        strong = peaks & (inner >= max(float(np.quantile(inner, 0.98)), _MIN_EDGE_STEP))
        rows, columns = np.nonzero(strong)
        columns = columns + 1  # index into `steps`: between pixels c and c + 1
        inside = columns + 2 < image.shape[1]
        rows, columns = rows[inside], columns[inside]
        across = np.abs(image[rows, columns + 2] - image[rows, columns - 1])
        wide = across >= _MIN_EDGE_STEP
        ratios.append(steps[rows, columns][wide] / across[wide])
    found = np.concatenate(ratios)
    return float(np.median(found)) if found.size >= _MIN_EDGES else None


def spectral_corner(y: np.ndarray) -> float | None:
    """Log of the spectrum's power in its corner near Nyquist over the power near Nyquist along
    the axes (see the module docstring): about -2 for antialiased resizes, about -0.8 without;
    None for images too small to tell (or without detail)."""
    if min(y.shape) < _MIN_SIDE:
        return None
    height, width = y.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.rfft2((y - y.mean()) * window)) ** 2
    fy = np.abs(np.fft.fftfreq(height))[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    high_y, high_x, low_y, low_x = fy >= 0.3, fx >= 0.3, fy < 0.1, fx < 0.1
    corner = power[high_y & high_x].mean()
    axes = power[(high_x & low_y) | (high_y & low_x)].mean()
    if axes <= 0 or corner <= 0:
        return None
    return float(math.log(corner / axes))


def hard_edges(y: np.ndarray) -> float | None:
    """The share of the strong steps (8 grey levels or more between neighbours, along rows and
    columns) that jump straight from one flat run to another (the two pixels before the step
    equal, and the two after): 0.26-0.92 for drawings rendered without antialiasing, 0.12 at
    most with antialiasing, 0.043 at most for photographs downscaled under any of the evaluation's
    categories (models/README.md); None with fewer than 20 steps."""
    exact = strong = 0
    for image in (y, y.T):
        before, left, right, after = image[:, :-3], image[:, 1:-2], image[:, 2:-1], image[:, 3:]
        steps = np.abs(right - left) >= _MIN_EDGE_STEP
        strong += int(steps.sum())
        exact += int((steps & (before == left) & (right == after)).sum())
    return exact / strong if strong >= _MIN_EDGES else None


def flat_share(y: np.ndarray) -> float | None:
    """The share of horizontally and vertically neighbouring pixels with exactly the same luma:
    0.78-0.99 for drawings, 0.50 at most for colour photographs saved losslessly under any of the
    evaluation's categories (models/README.md); None for images too small to tell (under 16
    pixels a side) or with nothing drawn on them (fewer than 20 steps of 8 grey levels: a blank
    page is no drawing). Greyscale photographs measure higher (only 256 levels to be equal in)."""
    if min(y.shape) < _MIN_SIDE:
        return None
    rows, columns = np.diff(y, axis=1), np.diff(y, axis=0)
    steps = int((np.abs(rows) >= _MIN_EDGE_STEP).sum() + (np.abs(columns) >= _MIN_EDGE_STEP).sum())
    if steps < _MIN_EDGES:
        return None
    return float(((rows == 0).mean() + (columns == 0).mean()) / 2)


def aliasing_score(y: np.ndarray) -> float | None:
    """How much the image looks resized without antialiasing: its edge sharpness, nudged by the
    spectrum's corner (weights fitted on training images, models/README.md): about 0.7 for an
    antialiased resize, 1.0-1.4 without; None when either measure cannot tell."""
    edges, corner = edge_sharpness(y), spectral_corner(y)
    if edges is None or corner is None:
        return None
    return _aliasing(edges, corner)


def _aliasing(edges: float, corner: float) -> float:
    return edges + _CORNER_WEIGHT * (corner - _CORNER_CENTRE)


@dataclass(frozen=True)
class Evidence:
    """What an input shows of its history.

    Attributes:
        jpeg_quality: The estimated JPEG quality, None for files that are not JPEG.
        webp_quality: The estimated quality of a lossy WebP file, None for other files.
        noise: Estimated noise standard deviation on the luma (0-255 scale).
        sharpness: How sharp its strongest edges are (`edge_sharpness`): low for a blurred
            picture.
        aliasing: The aliasing score (`aliasing_score`).
        hard_edges: The share of its edges that jump between flat runs (`hard_edges`): high
            for a drawing rendered without antialiasing.
        flat: The share of neighbouring pixels that are equal (`flat_share`): high for a
            drawing.

    A measure is None where the image is too small (or too flat) to tell.
    """

    jpeg_quality: int | None
    webp_quality: int | None
    noise: float | None
    sharpness: float | None
    aliasing: float | None
    hard_edges: float | None
    flat: float | None

    @classmethod
    def measure(
        cls,
        rgb: np.ndarray,
        jpeg_luma_table: Sequence[int] | None,
        webp_quantizer: int | None = None,
    ) -> Evidence:
        """The evidence of a decoded image, its file's JPEG luminance table (None if the file
        is not a JPEG) and lossy WebP quantiser (None if it is not one), read from its central
        `_MAX_SIDE`² at most: the measures are local statistics, and a crop bounds their time
        and memory on the largest inputs."""
        height, width = rgb.shape[:2]
        top, left = max(0, (height - _MAX_SIDE) // 2), max(0, (width - _MAX_SIDE) // 2)
        y = luma(rgb[top : top + _MAX_SIDE, left : left + _MAX_SIDE])
        edges, corner = edge_sharpness(y), spectral_corner(y)
        aliasing = None if edges is None or corner is None else _aliasing(edges, corner)
        return cls(
            jpeg_quality(jpeg_luma_table),
            webp_quality(webp_quantizer),
            noise_sigma(y),
            edges,
            aliasing,
            hard_edges(y),
            flat_share(y),
        )

    @classmethod
    def of(cls, decoded: DecodedImage) -> Evidence:
        """The evidence of a decoded upload: its pixels and what its file's header says of
        its compression."""
        info = decoded.info
        return cls.measure(decoded.rgb, info.jpeg_luma_table, info.webp_quantizer)

    def describe(self) -> str:
        """`jpeg-quality=72; webp-quality=none; noise=3.1; sharpness=0.70; aliasing=0.71;
        hard-edges=0.00; flat=0.02` (`none` where not measured)."""

        def text(value: float | None, digits: int) -> str:
            return "none" if value is None else f"{value:.{digits}f}"

        return (
            f"jpeg-quality={text(self.jpeg_quality, 0)}; "
            f"webp-quality={text(self.webp_quality, 0)}; noise={text(self.noise, 1)}; "
            f"sharpness={text(self.sharpness, 2)}; aliasing={text(self.aliasing, 2)}; "
            f"hard-edges={text(self.hard_edges, 2)}; flat={text(self.flat, 2)}"
        )
