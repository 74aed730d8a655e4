"""The degradations: each ingredient on tiny synthetic images (no data set needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training import degradations
from training.data import ImagePair, TrainingPatches, bicubic_downscale
from training.degradations import (
    CATEGORIES,
    DEGRADATIONS,
    JPEG_CATEGORIES,
    MIXTURES,
    Blend,
    Mixture,
    category_file,
)
from training.protocol import psnr_y


def smooth_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (low-frequency, so resizes of it stay comparable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


@pytest.mark.parametrize("method", ["pil_bicubic", "area", "cv2_cubic", "cv2_linear", "nearest"])
def test_downscale_is_aligned_with_the_standard_degradation(method):
    hr = smooth_image()
    lr = degradations.downscale(hr, 4, method)
    reference = bicubic_downscale(hr, 4)
    assert lr.shape == reference.shape and lr.dtype == np.uint8
    # Aligned: the reference is closer to this LR than to any copy shifted by one LR pixel.
    error = np.abs(lr.astype(int) - reference).mean()
    shifted = np.abs(np.roll(lr, 1, axis=1).astype(int) - reference).mean()
    assert error < shifted


def test_downscale_refuses_a_size_that_is_not_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="modcrop"):
        degradations.downscale(np.zeros((10, 12, 3), np.uint8), 4, "area")


def test_nearest_keeps_the_pixel_at_the_offset():
    hr = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    lr = degradations.downscale(hr, 4, "nearest", offset=1)
    np.testing.assert_array_equal(lr, hr[1::4, 1::4])


def test_blur_kernel_is_normalised_and_anisotropic_when_asked():
    kernel = degradations.gaussian_kernel(3.0, 0.5, 0.0)
    assert kernel.sum() == pytest.approx(1.0)
    # Wide along x, narrow along y.
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre + 3] > 10 * kernel[centre + 3, centre]


def test_blur_keeps_a_flat_image_and_softens_an_edge():
    flat = np.full((16, 16, 3), 100, np.uint8)
    np.testing.assert_array_equal(degradations.blur(flat, 1.5), flat)
    edge = np.zeros((16, 16, 3), np.uint8)
    edge[:, 8:] = 255
    blurred = degradations.blur(edge, 1.5)
    assert 0 < blurred[0, 7, 0] < 255 and blurred.dtype == np.uint8


@pytest.mark.parametrize("grey", [False, True])
def test_noise_has_the_requested_sigma(grey):
    image = np.full((128, 128, 3), 128, np.uint8)
    noisy = degradations.add_noise(image, 10.0, grey, np.random.default_rng(0))
    difference = noisy.astype(np.float64) - image
    assert difference.std() == pytest.approx(10.0, rel=0.05)
    channels_equal = np.array_equal(difference[..., 0], difference[..., 1])
    assert channels_equal == grey


def test_jpeg_really_decodes_a_lossy_copy():
    image = smooth_image(64)
    low, high = degradations.jpeg(image, 30), degradations.jpeg(image, 95)
    assert low.shape == image.shape and low.dtype == np.uint8
    assert not np.array_equal(low, image)
    assert np.abs(low.astype(int) - image).mean() > np.abs(high.astype(int) - image).mean()


def test_a_mixture_is_deterministic_per_seed():
    hr = smooth_image()
    mixture = Mixture(clean=0.0, blur=1.0, noise=1.0, jpeg=1.0)
    first = degradations.apply_mixture(hr, 4, mixture, np.random.default_rng(7))
    again = degradations.apply_mixture(hr, 4, mixture, np.random.default_rng(7))
    other = degradations.apply_mixture(hr, 4, mixture, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_clean_mixture_is_the_standard_degradation():
    hr = smooth_image()
    lr = degradations.apply_mixture(hr, 4, MIXTURES["bicubic"], np.random.default_rng(0))
    np.testing.assert_array_equal(lr, bicubic_downscale(hr, 4))


def clean_share(degradation: Mixture | Blend) -> float:
    """The share of draws that get only the clean resize, by the recipe."""
    if isinstance(degradation, Mixture):
        return degradation.clean
    total = sum(weight for weight, _ in degradation.parts)
    return sum(weight * part.clean for weight, part in degradation.parts) / total


@pytest.mark.parametrize("name", ["realistic", "realistic-clean20", "uploads", "targeted"])
def test_a_mixture_keeps_its_clean_share(name: str):
    mixture = DEGRADATIONS[name]
    hr = smooth_image(32)
    clean = bicubic_downscale(hr, 4)
    rng = np.random.default_rng(0)
    draws = [degradations.apply_mixture(hr, 4, mixture, rng) for _ in range(400)]
    share = np.mean([np.array_equal(lr, clean) for lr in draws])
    # Clean draws, plus the few degraded ones that happen to equal them (area/pil resize alone).
    assert clean_share(mixture) <= share < clean_share(mixture) + 0.15


def test_a_blend_draws_each_part_by_its_weight():
    hr = smooth_image(32)
    clean = bicubic_downscale(hr, 4)
    nearest = [degradations.downscale(hr, 4, "nearest", offset=k) for k in (1, 2)]
    blend = Blend(((0.3, MIXTURES["bicubic"]), (0.7, Mixture(clean=0.0, resize={"nearest": 1}))))
    rng = np.random.default_rng(0)
    draws = [degradations.apply_mixture(hr, 4, blend, rng) for _ in range(400)]
    share = np.mean([np.array_equal(lr, clean) for lr in draws])
    assert 0.24 < share < 0.36
    # Every other draw came from the nearest part (its offset is 1 or 2).
    parts = [clean, *nearest]
    assert all(any(np.array_equal(lr, part) for part in parts) for lr in draws)


def test_every_training_degradation_names_existing_resize_methods():
    mixtures = [m for d in DEGRADATIONS.values() for m in getattr(d, "parts", [(1.0, d)])]
    for _, mixture in mixtures:
        assert set(mixture.resize) <= {*degradations.RESIZERS, "nearest"}


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_categories_make_aligned_lr_of_a_quarter_size(category):
    hr = smooth_image()
    lr = CATEGORIES[category](hr, 4, np.random.default_rng(0))
    assert lr.shape == (16, 16, 3) and lr.dtype == np.uint8
    upscaled = np.asarray(Image.fromarray(lr).resize((64, 64), Image.BICUBIC))
    assert psnr_y(upscaled, hr, 4) > 20  # the same picture, aligned


def test_degraded_training_patches_stay_aligned_and_deterministic():
    hr = smooth_image(96)
    pair = ImagePair("x", hr, bicubic_downscale(hr, 4))
    stream = TrainingPatches([pair], 4, 32, 8, degradation=MIXTURES["realistic"], augment=False)
    lr, hr_batch = stream[0]
    assert lr.shape == (8, 8, 8, 3) and hr_batch.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(lr, stream[0][0])
    for lr_patch, hr_patch in zip(lr, hr_batch, strict=True):
        upscaled = Image.fromarray(lr_patch.astype(np.uint8)).resize((32, 32), Image.BICUBIC)
        assert psnr_y(np.asarray(upscaled), hr_patch.astype(np.uint8), 4) > 18


@pytest.mark.parametrize("name", sorted(CATEGORIES))
def test_a_categorys_file_is_what_a_user_would_upload(name: str, photo) -> None:
    hr = photo(64, 48)
    data = category_file(name, hr, 4, np.random.default_rng(7))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == ("JPEG" if name in JPEG_CATEGORIES else "PNG")
        pixels = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pixels, CATEGORIES[name](hr, 4, np.random.default_rng(7)))
