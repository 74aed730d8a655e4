"""Training runs: the run folder, resume, refusal to overwrite, early stopping."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from training.config import TrainConfig
from training.train import train


def _config(image_folder, out, **overrides) -> TrainConfig:
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


def test_a_short_run_fills_the_run_folder(image_folder, tmp_path):
    state = train(_config(image_folder, tmp_path / "run"))
    run = tmp_path / "run"
    assert state.step == 4 and state.epoch == 2
    for name in ("config.json", "state.json", "best.keras", "last.keras", "history.csv"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train_images"] == 4 and len(config["val_images"]) == 2
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2, 4]
    assert {"loss", "psnr", "val_loss", "val_psnr", "learning_rate"} <= set(rows[0])


def test_validation_images_never_train(image_folder, tmp_path):
    config = _config(image_folder, tmp_path / "run", val_data=[str(image_folder / "a.png")])
    train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["val_images"] == [str(image_folder / "a.png")]
    assert saved["train_images"] == 5


def test_resume_ends_where_an_uninterrupted_run_ends(image_folder, tmp_path):
    straight = train(_config(image_folder, tmp_path / "straight", steps=8))
    train(_config(image_folder, tmp_path / "resumed", steps=4))
    resumed = train(_config(image_folder, tmp_path / "resumed", steps=8), resume=True)
    assert resumed.step == straight.step == 8
    assert resumed.epoch == straight.epoch == 4
    rows = list(csv.DictReader((tmp_path / "resumed" / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2, 4, 6, 8]
    # Same seed, same batches, restored Adam moments: the weights follow the same path.
    a = keras.models.load_model(tmp_path / "straight" / "last.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "last.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-4)


def test_an_existing_run_is_not_overwritten_without_resume(image_folder, tmp_path):
    train(_config(image_folder, tmp_path / "run"))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(image_folder, tmp_path / "run"))


def test_resume_without_a_run_is_an_error(image_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_config(image_folder, tmp_path / "empty"), resume=True)


def test_early_stopping_ends_the_run_after_patience_evaluations(image_folder, tmp_path):
    # A zero learning rate never improves validation, so the run stops after 1 + patience evals.
    state = train(
        _config(image_folder, tmp_path / "run", steps=20, lr=0.0, lr_values=[0.0, 0.0], patience=2)
    )
    assert state.stopped_early
    assert state.epoch == 3


def test_steps_must_be_a_multiple_of_the_evaluation_interval(image_folder, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        train(_config(image_folder, tmp_path / "run", steps=5, eval_every=2))
