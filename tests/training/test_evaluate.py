"""Evaluation protocol on a synthetic benchmark set, for Keras and ONNX models."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import bicubic_downscale, bicubic_upscale, load_rgb, modcrop
from training.evaluate import (
    Upscaler,
    evaluate_categories,
    evaluate_folder,
    evaluate_sets,
    format_category_table,
    format_table,
    load_upscaler,
)
from training.export import export_onnx
from training.model import build_edsr
from training.protocol import psnr_y


def _bicubic_model(scale: int) -> Upscaler:
    """A stand-in 'model' that is bicubic itself, so its scores must equal the bicubic row."""

    def run(batch):
        return np.stack([bicubic_upscale(img.astype(np.uint8), scale) for img in batch])

    return Upscaler(run, scale, name="bicubic")


def test_bicubic_row_follows_the_protocol(image_folder):
    result = evaluate_folder(_bicubic_model(4), image_folder, scale=4)
    assert result["images"] == 6
    hr = modcrop(load_rgb(image_folder / "a.png"), 4)
    expected = psnr_y(bicubic_upscale(bicubic_downscale(hr, 4), 4), hr, border=4)
    row = next(r for r in result["per_image"] if r["image"] == "a.png")
    assert row["bicubic_psnr"] == pytest.approx(expected)
    assert result["psnr"] == pytest.approx(result["bicubic_psnr"])
    assert result["ssim"] == pytest.approx(result["bicubic_ssim"])


def test_cv2_lr_kind_changes_the_degradation(image_folder):
    pil = evaluate_folder(_bicubic_model(4), image_folder, scale=4, lr_kind="pil")
    cv2 = evaluate_folder(_bicubic_model(4), image_folder, scale=4, lr_kind="cv2")
    assert pil["bicubic_psnr"] != pytest.approx(cv2["bicubic_psnr"])


def test_self_ensemble_of_an_equivariant_model_changes_nothing(image_folder):
    plain = evaluate_folder(_bicubic_model(4), image_folder, scale=4)
    ensembled = evaluate_folder(_bicubic_model(4), image_folder, scale=4, ensemble=True)
    assert ensembled["psnr"] == pytest.approx(plain["psnr"], abs=0.05)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "tiny.keras"
    build_edsr(filters=8, blocks=1).save(path)
    return path


def test_keras_and_onnx_models_score_alike(tiny_checkpoint, image_folder, tmp_path):
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(tiny_checkpoint, onnx_path)
    keras_result = evaluate_sets(load_upscaler(tiny_checkpoint), [image_folder])
    onnx_result = evaluate_sets(load_upscaler(onnx_path), [image_folder])
    assert onnx_result["scale"] == keras_result["scale"] == 4
    assert onnx_result["sets"][0]["psnr"] == pytest.approx(
        keras_result["sets"][0]["psnr"], abs=0.01
    )
    assert "photos" in format_table(onnx_result)


def test_large_images_are_tiled_with_the_same_result(tiny_checkpoint, image_folder):
    whole = evaluate_folder(load_upscaler(tiny_checkpoint, tile_size=256), image_folder, 4)
    tiled = evaluate_folder(load_upscaler(tiny_checkpoint, tile_size=40), image_folder, 4)
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=0.01)


def test_categories_score_the_same_lr_for_model_and_bicubic(image_folder):
    results = evaluate_categories(_bicubic_model(4), [image_folder], ["clean", "noise-10"])
    rows = {row["category"]: row for row in results["categories"]}
    assert set(rows) == {"clean", "noise-10"}
    for row in rows.values():
        assert row["gain"] == pytest.approx(0.0, abs=1e-9)  # "model" is bicubic itself
    assert rows["noise-10"]["bicubic_psnr"] < rows["clean"]["bicubic_psnr"]
    assert "noise-10" in format_category_table(results)


def test_category_noise_is_seeded_per_image(image_folder):
    first = evaluate_categories(_bicubic_model(4), [image_folder], ["noise-10"])
    again = evaluate_categories(_bicubic_model(4), [image_folder], ["noise-10"])
    assert first["categories"][0]["psnr"] == again["categories"][0]["psnr"]
