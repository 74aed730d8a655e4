"""Data pipeline: decoding, both folder layouts, the degradation, patches and validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from training.data import (
    ImagePair,
    TrainingPatches,
    UnreadableImageError,
    ValidationImages,
    bicubic_downscale,
    discover_sources,
    load_pair,
    load_pairs,
    load_rgb,
    modcrop,
)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_every_common_mode_decodes_to_rgb_uint8(tmp_path, photo, mode):
    rgb = Image.fromarray(photo(20, 30))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    decoded = load_rgb(path)
    assert decoded.dtype == np.uint8
    assert decoded.shape == (20, 30, 3)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "white.png")
    assert load_rgb(tmp_path / "white.png").min() == 255


def test_alpha_is_dropped_keeping_the_colour(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png")[0, 0], [200, 0, 0])


def test_unreadable_file_is_reported_by_name(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UnreadableImageError, match=r"broken\.png"):
        load_rgb(bad)


def test_load_pairs_skips_unreadable_and_too_small_images_with_warnings(tmp_path, photo, caplog):
    Image.fromarray(photo(64, 64)).save(tmp_path / "good.png")
    Image.fromarray(photo(16, 64)).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(discover_sources([tmp_path], 4), scale=4, min_hr_size=32)
    assert [p.name for p in pairs] == ["good.png"]
    assert "broken.jpg" in caplog.text
    assert "small.png" in caplog.text


def test_a_float_image_is_refused_not_decoded_to_black(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
    with pytest.raises(UnreadableImageError, match="float"):
        load_rgb(path)


def test_an_image_smaller_than_the_scale_is_skipped_not_fatal(tmp_path, photo, caplog):
    # Cropped to a multiple of 4, a 3-pixel-wide image has no pixels left.
    Image.fromarray(photo(64, 64)).save(tmp_path / "good.png")
    Image.fromarray(photo(5, 3)).save(tmp_path / "sliver.png")
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(discover_sources([tmp_path], 4), scale=4)
    assert [p.name for p in pairs] == ["good.png"]
    assert "sliver.png is narrower or shorter than 4 pixels" in caplog.text


def test_plain_folder_is_searched_recursively_for_every_format(image_folder):
    names = sorted(s.hr_path.name for s in discover_sources([image_folder], 4))
    assert names == ["a.png", "b.jpg", "c.bmp", "d.webp", "e.tif", "f.png"]
    assert all(s.lr_path is None for s in discover_sources([image_folder], 4))


@pytest.mark.parametrize("subfolder", ["", "DIV2K_train_HR"])
def test_div2k_layout_pairs_each_hr_image_with_its_shipped_lr(div2k_root, subfolder):
    sources = discover_sources([div2k_root / subfolder], 4)
    assert [(s.hr_path.name, s.lr_path.name) for s in sources] == [
        ("0001.png", "0001x4.png"),
        ("0002.png", "0002x4.png"),
        ("0003.png", "0003x4.png"),
    ]
    pair = load_pair(sources[0], 4)
    assert pair.lr.shape == (16, 20, 3) and pair.hr.shape == (64, 80, 3)


def _srf_set(root, photo):
    """A benchmark set as SelfExSR ships it: image_SRF_{2,4}/img_00N_SRF_s_{HR,LR}.png; the LR
    files are flat grey, so using them is visible."""
    for scale in (2, 4):
        folder = root / f"image_SRF_{scale}"
        folder.mkdir(parents=True)
        for index in (1, 2):
            Image.fromarray(photo(32, 40, index)).save(folder / f"img_00{index}_SRF_{scale}_HR.png")
            grey = np.full((32 // scale, 40 // scale, 3), 128, np.uint8)
            Image.fromarray(grey).save(folder / f"img_00{index}_SRF_{scale}_LR.png")
    return root


def test_selfexsr_layout_scores_only_this_scales_hr_images(tmp_path, photo):
    sources = discover_sources([_srf_set(tmp_path / "Set5", photo)], 4)
    assert [(s.hr_path.name, s.lr_path.name) for s in sources] == [
        ("img_001_SRF_4_HR.png", "img_001_SRF_4_LR.png"),
        ("img_002_SRF_4_HR.png", "img_002_SRF_4_LR.png"),
    ]


def test_a_shipped_lr_is_the_standard_kind_only(tmp_path, photo):
    source = discover_sources([_srf_set(tmp_path / "Set5", photo)], 4)[0]
    assert np.all(load_pair(source, 4, "pil").lr == 128)
    pytest.importorskip("cv2")
    made = load_pair(source, 4, "cv2")
    assert not np.all(made.lr == 128) and made.lr.shape == (8, 10, 3)


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        discover_sources([tmp_path / "nope"], 4)


def test_degradation_is_pillows_antialiased_bicubic_after_modcrop(photo):
    hr = modcrop(photo(67, 70), 4)
    assert hr.shape[:2] == (64, 68)
    expected = np.asarray(Image.fromarray(hr).resize((17, 16), Image.BICUBIC))
    np.testing.assert_array_equal(bicubic_downscale(hr, 4), expected)


def _block_pair(seed: int, lr_size=(12, 10), scale=4, colour=None) -> ImagePair:
    """An HR image made of scale x scale blocks, one per LR pixel: aligned crops keep
    hr[::scale, ::scale] == lr exactly, whatever rotation or mirror is applied."""
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (*lr_size, 3), dtype=np.uint8)
    if colour is not None:
        lr[:] = colour
    hr = np.kron(lr, np.ones((scale, scale, 1), np.uint8))
    return ImagePair(f"img{seed}", hr, lr)


def test_augmented_patches_keep_lr_and_hr_aligned():
    patches = TrainingPatches(
        [_block_pair(0), _block_pair(1)],
        scale=4,
        patch_size=16,
        batch_size=8,
        steps_per_epoch=4,
        workers=1,
    )
    for index in range(4):
        lr, hr = patches[index]
        assert lr.shape == (8, 4, 4, 3) and hr.shape == (8, 16, 16, 3)
        np.testing.assert_array_equal(hr[:, ::4, ::4], lr)


def test_augmentation_moves_pixels_but_never_mixes_colour_channels():
    # Every LR pixel of this image is one of three distinct colours; a flip across the channel
    # axis would create new colours.
    pair = _block_pair(0)
    palette = np.array([[255, 0, 0], [0, 128, 0], [1, 2, 3]], np.uint8)
    pair.lr[:] = palette[np.arange(pair.lr.size // 3).reshape(pair.lr.shape[:2]) % 3]
    pair.hr[:] = np.kron(pair.lr, np.ones((4, 4, 1), np.uint8))
    patches = TrainingPatches(
        [pair], scale=4, patch_size=16, batch_size=16, steps_per_epoch=2, workers=1
    )
    lr, _ = patches[0]
    seen = {tuple(p) for p in lr.reshape(-1, 3).astype(int)}
    assert seen <= {tuple(p) for p in palette.astype(int)}


def test_each_pass_visits_every_image_once_in_shuffled_order():
    pairs = [_block_pair(i, colour=i) for i in range(5)]
    patches = TrainingPatches(
        pairs, scale=4, patch_size=8, batch_size=5, steps_per_epoch=3, workers=1, seed=3
    )
    orders = [tuple(int(v) for v in patches[i][0][:, 0, 0, 0]) for i in range(3)]
    assert all(sorted(order) == [0, 1, 2, 3, 4] for order in orders)
    assert len(set(orders)) > 1


def test_batches_depend_only_on_seed_epoch_and_index():
    pairs = [_block_pair(i) for i in range(3)]
    first = TrainingPatches(
        pairs, scale=4, patch_size=8, batch_size=4, steps_per_epoch=5, seed=7, workers=1
    )
    resumed = TrainingPatches(
        pairs,
        scale=4,
        patch_size=8,
        batch_size=4,
        steps_per_epoch=5,
        seed=7,
        initial_epoch=1,
        workers=1,
    )
    first.on_epoch_end()
    np.testing.assert_array_equal(first[2][0], resumed[2][0])
    np.testing.assert_array_equal(first[2][1], resumed[2][1])


def test_patch_size_must_be_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="multiple"):
        TrainingPatches([_block_pair(0)], scale=4, patch_size=18)


def test_validation_centre_crops_are_deterministic_and_aligned():
    pairs = [_block_pair(0, (12, 10)), _block_pair(1, (10, 12)), _block_pair(2, (6, 6))]
    val = ValidationImages(pairs, scale=4, crop=32, batch_size=8)
    assert len(val) == 1  # The 24x24 HR image is smaller than the crop and skipped.
    lr, hr = val[0]
    assert lr.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(hr[:, ::4, ::4], lr)
    np.testing.assert_array_equal(val[0][0], lr)


def test_whole_image_validation_uses_batches_of_one():
    val = ValidationImages([_block_pair(0, (12, 10)), _block_pair(1, (10, 12))], scale=4)
    assert len(val) == 2
    assert val[1][0].shape == (1, 10, 12, 3)


def test_whole_validation_images_start_with_two_that_differ_wherever_sizes_vary():
    # Keras fixes the dimensions its first two validation batches agree on (TensorFlow backend).
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = [tuple(rng.integers(1, 4, size=2) * 4) for _ in range(int(rng.integers(3, 7)))]
        pairs = [
            ImagePair(str(i), np.zeros((h * 4, w * 4, 3), np.uint8), np.zeros((h, w, 3), np.uint8))
            for i, (h, w) in enumerate(sizes)
        ]
        ordered = ValidationImages(pairs, scale=4).pairs
        assert sorted(p.name for p in ordered) == sorted(p.name for p in pairs)
        first, second = ordered[0].lr.shape, ordered[1].lr.shape
        for axis in (0, 1):
            if len({size[axis] for size in sizes}) > 1:
                assert first[axis] != second[axis], sizes
