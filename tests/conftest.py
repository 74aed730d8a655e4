"""Shared test helpers: small synthetic photos, so no test needs downloaded data."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Quieter TensorFlow logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth-plus-detail RGB image (gradients, waves, a few edges) that downscales the way a
    photo does, as HxWx3 uint8."""
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
    image = (image - image.min()) / (image.max() - image.min() + 1e-9)
    return np.round(image * 255).astype(np.uint8)


@pytest.fixture
def photo():
    """Factory fixture: `photo(height, width, seed=0)`."""
    return synthetic_photo
