"""Benchmark inputs: real photographs when the shared data is there, synthetic ones otherwise.

Timings hardly depend on content, but encoded sizes and encoder speeds do, so the harness
prefers real photographs: the shared benchmark sets (`../shared/data/bench`), resized with
Pillow's antialiased bicubic to the side asked for (a downscaled photo is what a super-resolution
service is sent). Without them a smooth-plus-detail synthetic picture stands in, and the report
says which was used.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

#: Where the shared data lives relative to the repository root.
SHARED_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bench"
#: Photographs used as sources, largest first; all are in Set14 / Set5.
PHOTO_NAMES = ("Set14/barbara.png", "Set14/zebra.png", "Set5/baby.png", "Set14/comic.png")


def synthetic_photo(height: int, width: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """Gradients, waves and edges that downscale and compress roughly the way a photo does.

    The test suite draws its inputs from here too, so that no test needs downloaded data.

    Args:
        height: Rows.
        width: Columns.
        seed: Picks the wave frequencies (and the noise).
        noise: Standard deviation of added Gaussian noise, relative to the 0-1 range; a little
            makes encoded sizes and encoder speeds more like a camera photo's.

    Returns:
        An (H, W, 3) uint8 image.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for c in range(3):
        fx, fy = rng.uniform(0.02, 0.3, 2)
        wave = np.sin(x * fx + c) * np.cos(y * fy - c)
        ramp = (x / max(width, 1) + y / max(height, 1)) / 2
        edges = ((x // (7 + 3 * c) + y // (11 + c)) % 2) * 0.3
        channels.append(0.45 * wave + 0.5 * ramp + edges)
    image = np.stack(channels, axis=-1)
    if noise:
        image += rng.normal(0, noise, image.shape)
    image = (image - image.min()) / (image.max() - image.min() + 1e-9)
    return np.round(image * 255).astype(np.uint8)


@cache
def _photo(name: str, root: Path) -> np.ndarray | None:
    path = root / name
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def bench_image(side: int, seed: int = 0, root: Path = SHARED_BENCH) -> tuple[np.ndarray, str]:
    """A square RGB input of `side` pixels and where it came from.

    A real photo is centre-cropped to a square and resized to `side`; `seed` picks the photo.

    Returns:
        The uint8 (side, side, 3) image and its source (a path, or `synthetic`).
    """
    names = PHOTO_NAMES[seed % len(PHOTO_NAMES) :] + PHOTO_NAMES[: seed % len(PHOTO_NAMES)]
    for name in names:
        photo = _photo(name, root)
        if photo is None:
            continue
        height, width = photo.shape[:2]
        crop = min(height, width)
        top, left = (height - crop) // 2, (width - crop) // 2
        square = Image.fromarray(photo[top : top + crop, left : left + crop])
        resized = square.resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(resized), name
    return synthetic_photo(side, side, seed, noise=0.02), "synthetic"


def png_file(image: np.ndarray) -> bytes:
    """The image as a PNG file, the way a client would upload it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def benchmark_set(name: str, root: Path = SHARED_BENCH) -> list[tuple[str, np.ndarray]]:
    """The RGB images of a shared benchmark set (e.g. `Set5`), sorted by name; [] if absent."""
    folder = root / name
    if not folder.is_dir():
        return []
    images = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            images.append((path.name, np.asarray(image.convert("RGB"))))
    return images
