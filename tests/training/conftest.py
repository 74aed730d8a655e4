"""Fixtures for the training tests: synthetic image folders in both supported layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import synthetic_photo


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of six small photos in mixed formats and sizes, one in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    specs = [
        ("a.png", 64, 80),
        ("b.jpg", 72, 64),
        ("c.bmp", 64, 64),
        ("d.webp", 96, 64),
        ("e.tif", 64, 68),
        ("more/f.png", 80, 96),
    ]
    for seed, (name, height, width) in enumerate(specs):
        Image.fromarray(synthetic_photo(height, width, seed)).save(folder / name, quality=95)
    return folder


@pytest.fixture
def div2k_root(tmp_path: Path) -> Path:
    """A miniature DIV2K tree: DIV2K_train_HR/000N.png and DIV2K_train_LR_bicubic/X4/000Nx4.png."""
    from training.data import bicubic_downscale

    root = tmp_path / "DIV2K"
    hr_dir = root / "DIV2K_train_HR"
    lr_dir = root / "DIV2K_train_LR_bicubic" / "X4"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    for i in range(1, 4):
        hr = synthetic_photo(64, 80, seed=10 + i)
        Image.fromarray(hr).save(hr_dir / f"{i:04d}.png")
        Image.fromarray(bicubic_downscale(hr, 4)).save(lr_dir / f"{i:04d}x4.png")
    return root


@pytest.fixture
def tiny_model_kwargs() -> dict:
    """The smallest EDSR that still exercises every layer kind."""
    return {"filters": 8, "blocks": 1}


@pytest.fixture
def tiny_config(image_folder, tmp_path):
    """Factory: a TrainConfig for a seconds-long run of a tiny model on `image_folder`."""
    from training.config import TrainConfig

    def make(out, **overrides) -> TrainConfig:
        settings = dict(
            data=[str(image_folder)],
            out=str(out),
            val_holdout=2,
            steps=4,
            eval_every=2,
            batch_size=2,
            patch_size=32,
            filters=8,
            blocks=1,
            workers=1,
            verbose=0,
            patience=0,
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    return make
