"""Self-ensemble: the 8 flips and rotations, averaged as float or as rounded uint8."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.ensemble import self_ensemble, self_ensemble_uint8


def _nearest_x2(image: np.ndarray) -> np.ndarray:
    """A model that commutes with every flip and rotation."""
    return image.repeat(2, axis=0).repeat(2, axis=1)


def _position_dependent_x2(image: np.ndarray) -> np.ndarray:
    """A model that does not commute with flips: it adds a ramp fixed to its own frame."""
    upscaled = _nearest_x2(image).astype(np.int32)
    ramp = np.arange(upscaled.shape[1], dtype=np.int32)[np.newaxis, :, np.newaxis] * 7 % 23
    return np.clip(upscaled + ramp, 0, 255).astype(np.uint8)


def test_an_equivariant_model_is_unchanged() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(self_ensemble(_nearest_x2, image), _nearest_x2(image))
    assert np.array_equal(self_ensemble_uint8(_nearest_x2, image), _nearest_x2(image))


def test_uint8_mean_rounds_like_the_float_mean() -> None:
    # Over 300 output rows (two rounding blocks), with many sums that end in exactly one half.
    image = np.random.default_rng(1).integers(0, 256, (150, 9, 3), dtype=np.uint8)
    expected = np.round(self_ensemble(_position_dependent_x2, image))
    got = self_ensemble_uint8(_position_dependent_x2, image)
    assert got.dtype == np.uint8
    assert np.array_equal(got, expected)
    sums = self_ensemble(_position_dependent_x2, image) * 8
    assert np.count_nonzero(sums % 8 == 4) > 0  # the ties were exercised


def test_uint8_mean_refuses_float_outputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        self_ensemble_uint8(
            lambda image: _nearest_x2(image).astype(np.float32), np.zeros((2, 2, 3))
        )
