"""Training runs: the run folder, resume, refusal to overwrite, early stopping."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from training.config import TrainConfig
from training.train import build_and_compile, learning_rate_schedule, train


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


def _weights(run_dir):
    return keras.models.load_model(run_dir / "last.keras").get_weights()


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_config, tmp_path):
    # Four batches an epoch, so a resume that replayed them in another order would show.
    straight = train(tiny_config(tmp_path / "straight", steps=8, eval_every=4))
    train(tiny_config(tmp_path / "resumed", steps=4, eval_every=4))
    resumed = train(tiny_config(tmp_path / "resumed", steps=8, eval_every=4), resume=True)
    assert resumed.step == straight.step == 8
    assert resumed.epoch == straight.epoch == 2
    rows = list(csv.DictReader((tmp_path / "resumed" / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [4, 8]
    # Same seed, same batches in the same order, restored Adam moments: the same weights (a
    # reordering of the batches alone moved them by up to 8e-5 here).
    for a, b in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_resume_continues_in_the_folder_it_is_given(tiny_config, tmp_path):
    import shutil

    train(tiny_config(tmp_path / "original"))
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    state = train(tiny_config(tmp_path / "copy", steps=8), resume=True)
    assert state.step == 8
    assert json.loads((tmp_path / "original" / "state.json").read_text())["step"] == 4
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["out"] == str(
        tmp_path / "copy"
    )


def test_steps_count_batches_even_when_float16_loss_scaling_skips_updates(tiny_config, tmp_path):
    # Loss scaling starts high and skips the first updates while it finds its level; the step
    # counter still reports the batches trained.
    state = train(tiny_config(tmp_path / "fp16", steps=2, eval_every=2, mixed_precision="float16"))
    assert state.step == 2
    rows = list(csv.DictReader((tmp_path / "fp16" / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2]


def test_history_rows_past_the_saved_state_are_dropped_on_resume(tiny_config, tmp_path):
    # A run killed after writing an evaluation's history row but before its state: the resume
    # redoes that evaluation, and the history must not hold it twice.
    run = tmp_path / "run"
    train(tiny_config(run, steps=4))
    state = json.loads((run / "state.json").read_text())
    state.update(epoch=1, step=2)
    (run / "state.json").write_text(json.dumps(state))
    train(tiny_config(run, steps=4), resume=True)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(float(r["step"])) for r in rows] == [2, 4]


def test_a_run_shorter_than_one_evaluation_interval_can_be_extended(tiny_config, tmp_path):
    train(tiny_config(tmp_path / "run", steps=2, eval_every=4))
    state = train(tiny_config(tmp_path / "run", steps=8, eval_every=4), resume=True)
    assert state.step == 8


def test_an_early_stopped_run_goes_on_when_given_more_steps(tiny_config, tmp_path):
    frozen = {"lr": 0.0, "lr_values": [0.0, 0.0], "patience": 2}
    stopped = train(tiny_config(tmp_path / "run", steps=20, **frozen))
    assert stopped.stopped_early and stopped.step == 6
    again = train(tiny_config(tmp_path / "run", steps=20, **frozen), resume=True)
    assert again.step == 6  # the same length: nothing to do
    extended = train(tiny_config(tmp_path / "run", steps=40, **frozen), resume=True)
    # The patience count starts again: two more evaluations without gain, then a stop.
    assert extended.stopped_early and extended.step == 10


def test_whole_image_validation_takes_images_of_any_sizes(tiny_config, tmp_path):
    # Keras (TensorFlow backend) fixes every dimension on which its first two validation
    # batches agree; here the first two files share a height and the third does not.
    from PIL import Image

    from tests.conftest import synthetic_photo

    folder = tmp_path / "val"
    folder.mkdir()
    for name, (height, width) in {"a": (64, 80), "b": (64, 96), "c": (72, 80)}.items():
        Image.fromarray(synthetic_photo(height, width, 1)).save(folder / f"{name}.png")
    val_files = [str(folder / f"{name}.png") for name in "abc"]
    state = train(tiny_config(tmp_path / "run", val_data=val_files, val_crop=0))
    assert state.step == 4 and state.best_val_psnr is not None


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


@pytest.mark.parametrize(("lr_values", "rate"), [(None, 3e-4), ([1e-4], 1e-4)])
def test_without_boundaries_the_rate_is_constant(lr_values, rate):
    config = TrainConfig(lr=3e-4, lr_boundaries=[], lr_values=lr_values)
    assert learning_rate_schedule(config) == rate


def test_a_constant_rate_run_resumes(tiny_config, tmp_path):
    train(tiny_config(tmp_path / "run", lr=3e-4, lr_boundaries=[]))
    train(tiny_config(tmp_path / "run", lr=3e-4, lr_boundaries=[], steps=6), resume=True)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([3e-4] * 3)


@pytest.mark.parametrize(("loss", "error"), [("l1", np.abs), ("mse", np.square)], ids=("l1", "mse"))
def test_the_loss_is_the_mean_of_the_named_error(tiny_config, tmp_path, loss, error):
    model = build_and_compile(tiny_config(tmp_path / "run", loss=loss))
    rng = np.random.default_rng(0)
    low_res = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    high_res = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    predicted = model.predict(low_res, verbose=0)
    measured = model.evaluate(low_res, high_res, verbose=0, return_dict=True)["loss"]
    assert measured == pytest.approx(float(np.mean(error(predicted - high_res))), rel=1e-4)


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


def test_average_from_keeps_the_mean_of_the_weights_at_each_validation(tiny_config, tmp_path):
    # Validations at steps 2, 4, 6, 8; averaging from step 4: those of 4, 6 and 8, the last two
    # after a resume (the running mean goes on from the saved one).
    straight = tmp_path / "straight"
    train(tiny_config(straight, steps=8, eval_every=2, average_from=4))
    resumed = tmp_path / "resumed"
    train(tiny_config(resumed, steps=4, eval_every=2, average_from=4))
    state = train(tiny_config(resumed, steps=8, eval_every=2), resume=True)
    assert state.averaged == 3
    snapshots = []
    for steps in (4, 6, 8):
        run = tmp_path / f"to{steps}"
        train(tiny_config(run, steps=steps, eval_every=2))
        snapshots.append(_weights(run))
    expected = [np.mean(layer, axis=0) for layer in zip(*snapshots, strict=True)]
    for run in (straight, resumed):
        average = keras.models.load_model(run / "average.keras").get_weights()
        for a, b in zip(average, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_without_average_from_no_average_is_kept(tiny_config, tmp_path):
    state = train(tiny_config(tmp_path / "run"))
    assert state.averaged == 0 and not (tmp_path / "run" / "average.keras").exists()
