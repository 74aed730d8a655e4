"""The evaluation protocol (Y-PSNR, SSIM) checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.protocol import psnr_y, rgb_to_y, ssim_y


def test_y_of_black_and_white_is_the_studio_range():
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255.0))[0, 0] == pytest.approx(235.0)


def test_psnr_of_identical_images_is_infinite(photo):
    image = photo(32, 32)
    assert psnr_y(image, image, border=4) == math.inf


def test_psnr_of_a_constant_rgb_offset_matches_the_closed_form(photo):
    hr = photo(32, 40) // 2
    sr = hr + 10  # +10 on R, G and B moves Y by 10 * 219 / 255.
    expected = 10 * math.log10(255**2 / (10 * 219 / 255) ** 2)
    assert psnr_y(sr, hr, border=4) == pytest.approx(expected, abs=1e-9)


def test_psnr_ignores_the_shaved_border(photo):
    hr = photo(32, 32)
    sr = hr.copy()
    sr[:4] = 0  # Damage only the top border band.
    assert psnr_y(sr, hr, border=4) == math.inf


def test_ssim_of_identical_images_is_one(photo):
    image = photo(40, 40)
    assert ssim_y(image, image, border=4) == pytest.approx(1.0)


def test_ssim_of_a_constant_offset_follows_the_luminance_term(photo):
    # A constant offset leaves variances and covariance unchanged, so SSIM reduces to the
    # luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) averaged over windows.
    hr = np.full((30, 30, 3), 100, np.uint8)
    sr = hr + 20
    mu_x, mu_y = rgb_to_y(sr)[0, 0], rgb_to_y(hr)[0, 0]
    c1 = (0.01 * 255) ** 2
    expected = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    assert ssim_y(sr, hr) == pytest.approx(expected, rel=1e-12)
