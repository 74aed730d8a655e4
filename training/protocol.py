"""The super-resolution literature's evaluation protocol: Y-channel PSNR and SSIM of uint8 images.

numpy only (no Keras), so the evaluation, the benchmarks and the service-only install share this
one copy. The functions work on uint8 images so that evaluation scores exactly what a user gets
(rounded 8-bit pixels).
"""

from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 luma on the "studio" range, as MATLAB's rgb2ycbcr computes it: the coefficients every
# published PSNR/SSIM table for super-resolution uses.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Returns the BT.601 luma (16-235 range) of an RGB image with values 0-255, as float64."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:  # Already single-channel: treat grey as R = G = B.
        image = np.repeat(image[..., None], 3, axis=-1)
    return image @ _Y_WEIGHTS + _Y_OFFSET


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """Crops `border` pixels from every edge (the protocol ignores the borders the model cannot
    see around)."""
    if border <= 0:
        return image
    return image[border:-border, border:-border]


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Peak signal-to-noise ratio on the Y channel, in dB, of two uint8 RGB images.

    Args:
        sr: The restored image, HxWx3 (or HxW grey), 0-255.
        hr: The reference image of the same shape.
        border: Pixels shaved from each edge before comparing (the scale, by convention).

    Returns:
        PSNR in dB; `math.inf` for identical images.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    return psnr(shave(rgb_to_y(sr), border), shave(rgb_to_y(hr), border))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two arrays of the same shape; `math.inf` when they are equal."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(coords**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering keeping only positions where the window fits (MATLAB's 'valid')."""
    size = kernel.size
    rows = np.lib.stride_tricks.sliding_window_view(image, size, axis=0) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ kernel


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Structural similarity (Wang et al., 2004) on the Y channel of two uint8 RGB images.

    Uses the reference settings: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
    dynamic range 255, and only windows that lie fully inside the (shaved) image.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    x = shave(rgb_to_y(sr), border)
    y = shave(rgb_to_y(hr), border)
    kernel = _gaussian_kernel()
    if min(x.shape) < kernel.size:
        raise ValueError(f"image of {x.shape} is too small for an {kernel.size}px SSIM window")
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    mu_x = _filter_valid(x, kernel)
    mu_y = _filter_valid(y, kernel)
    var_x = _filter_valid(x * x, kernel) - mu_x**2
    var_y = _filter_valid(y * y, kernel) - mu_y**2
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())
