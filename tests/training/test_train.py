"""Training runs: the run folder, resume, refusal to overwrite, early stopping."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from training.train import train


def test_a_short_run_fills_the_run_folder(tiny_config, tmp_path):
    state = train(tiny_config(tmp_path / "run"))
    run = tmp_path / "run"
    assert state.step == 4 and state.epoch == 2
    for name in ("config.json", "state.json", "best.keras", "last.keras", "history.csv"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train_images"] == 4 and len(config["val_images"]) == 2
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2, 4]
    assert {"loss", "psnr", "val_loss", "val_psnr", "learning_rate"} <= set(rows[0])


def test_validation_images_never_train(tiny_config, image_folder, tmp_path):
    config = tiny_config(tmp_path / "run", val_data=[str(image_folder / "a.png")])
    train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["val_images"] == [str(image_folder / "a.png")]
    assert saved["train_images"] == 5


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_config, tmp_path):
    straight = train(tiny_config(tmp_path / "straight", steps=8))
    train(tiny_config(tmp_path / "resumed", steps=4))
    resumed = train(tiny_config(tmp_path / "resumed", steps=8), resume=True)
    assert resumed.step == straight.step == 8
    assert resumed.epoch == straight.epoch == 4
    rows = list(csv.DictReader((tmp_path / "resumed" / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2, 4, 6, 8]
    # Same seed, same batches, restored Adam moments: the weights follow the same path.
    a = keras.models.load_model(tmp_path / "straight" / "last.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "last.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-4)


def test_an_existing_run_is_not_overwritten_without_resume(tiny_config, tmp_path):
    train(tiny_config(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path / "run"))


def test_resume_without_a_run_is_an_error(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(tmp_path / "empty"), resume=True)


def test_early_stopping_ends_the_run_after_patience_evaluations(tiny_config, tmp_path):
    # A zero learning rate never improves validation, so the run stops after 1 + patience evals.
    state = train(tiny_config(tmp_path / "run", steps=20, lr=0.0, lr_values=[0.0, 0.0], patience=2))
    assert state.stopped_early
    assert state.epoch == 3


def test_steps_must_be_a_multiple_of_the_evaluation_interval(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        train(tiny_config(tmp_path / "run", steps=5, eval_every=2))


def test_init_from_starts_with_the_given_weights(tiny_config, tmp_path):
    train(tiny_config(tmp_path / "base"))
    base = keras.models.load_model(tmp_path / "base" / "best.keras")
    # A zero learning rate keeps the initial weights, so they must equal the base checkpoint's.
    train(
        tiny_config(
            tmp_path / "tuned",
            init_from=str(tmp_path / "base" / "best.keras"),
            lr=0.0,
            lr_values=[0.0, 0.0],
        )
    )
    tuned = keras.models.load_model(tmp_path / "tuned" / "last.keras")
    for wa, wb in zip(base.get_weights(), tuned.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb)


def test_a_mixed_precision_run_leaves_the_callers_precision_policy_alone(tiny_config, tmp_path):
    import keras

    train(tiny_config(tmp_path / "bf16", steps=2, eval_every=2, mixed_precision="bfloat16"))
    assert keras.mixed_precision.global_policy().name == "float32"

    # A float32 run after it trains in float32 even if the caller left a mixed policy set.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        train(tiny_config(tmp_path / "fp32", steps=2, eval_every=2))
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = keras.saving.load_model(tmp_path / "fp32" / "last.keras")
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
