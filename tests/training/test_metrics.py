"""The Keras batch PSNR metric of training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import psnr_metric


def test_batch_psnr_metric_scores_every_image_not_just_the_first():
    hr = np.full((2, 8, 8, 3), 100.0, np.float32)
    sr = hr.copy()
    sr[0] += 1.0  # MSE 1  -> 48.13 dB
    sr[1] += 10.0  # MSE 100 -> 28.13 dB
    per_image = np.asarray(psnr_metric(hr, sr))
    np.testing.assert_allclose(per_image, [20 * math.log10(255), 20 * math.log10(25.5)], rtol=1e-5)


def test_batch_psnr_metric_clips_predictions_to_the_pixel_range():
    hr = np.full((1, 4, 4, 3), 255.0, np.float32)
    assert float(np.asarray(psnr_metric(hr, hr + 50.0))[0]) == pytest.approx(100.0)
