"""EDSR architecture: shapes, size, pixel shuffle layout, save/reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.model import EDSR, PixelShuffle, build_edsr, describe_edsr, load_edsr


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_larger_for_any_input_size(scale, tiny_model_kwargs):
    model = build_edsr(scale=scale, **tiny_model_kwargs)
    out = model(np.zeros((2, 7, 11, 3), np.float32))
    assert tuple(out.shape) == (2, 7 * scale, 11 * scale, 3)


def test_default_is_the_edsr_baseline_with_1_517_571_parameters():
    model = build_edsr()
    assert model.count_params() == 1_517_571
    assert describe_edsr(model) == {
        "scale": 4,
        "filters": 64,
        "blocks": 16,
        "res_scale": 1.0,
        "parameters": 1_517_571,
    }


def test_x4_upsamples_in_two_x2_pixel_shuffle_stages(tiny_model_kwargs):
    model = build_edsr(scale=4, **tiny_model_kwargs)
    factors = [layer.factor for layer in model.layers if isinstance(layer, PixelShuffle)]
    assert factors == [2, 2]


def test_unsupported_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        build_edsr(scale=5)


def test_pixel_shuffle_puts_channel_groups_in_the_depth_to_space_order():
    # Channel c of output pixel (dy, dx) inside each 2x2 block comes from input channel
    # (dy * 2 + dx) * C + c: TensorFlow's DCR layout, which tf2onnx maps to ONNX DepthToSpace.
    x = np.arange(1 * 1 * 1 * 8, dtype=np.float32).reshape(1, 1, 1, 8)
    out = np.asarray(PixelShuffle(2)(x))
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 2], [4, 6]])
    np.testing.assert_array_equal(out[0, :, :, 1], [[1, 3], [5, 7]])


def test_saved_model_reloads_with_identical_outputs(tmp_path, tiny_model_kwargs):
    model = build_edsr(**tiny_model_kwargs)
    batch = np.random.default_rng(0).uniform(0, 255, (1, 9, 13, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(batch)), np.asarray(reloaded(batch)))


def test_load_edsr_runs_a_mixed_precision_checkpoint_in_float32(tmp_path, tiny_model_kwargs):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        trained = build_edsr(**tiny_model_kwargs)
    finally:
        keras.config.set_dtype_policy("float32")
    trained.save(tmp_path / "bf16.keras")
    model = load_edsr(tmp_path / "bf16.keras")
    assert {layer.compute_dtype for layer in model.layers if layer.weights} == {"float32"}
    for mine, theirs in zip(model.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_the_architecture_round_trips_through_get_config(tmp_path, tiny_model_kwargs):
    model = EDSR(scale=3, res_scale=0.1, **tiny_model_kwargs)
    assert EDSR.from_config(model.get_config()).get_config() == model.get_config()
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded, EDSR) and reloaded.get_config() == model.get_config()


def test_a_checkpoint_saved_as_a_plain_functional_model_loads_and_resumes(tmp_path):
    # Checkpoints written before EDSR was a class hold a plain functional model.
    trained = EDSR(filters=8, blocks=2, res_scale=0.1)
    plain = keras.Model(trained.inputs, trained.outputs, name=trained.name)
    plain.save(tmp_path / "old.keras")
    assert describe_edsr(load_edsr(tmp_path / "old.keras")) == describe_edsr(trained)
    resumed = EDSR(filters=8, blocks=2, res_scale=0.1)
    resumed.load_weights(tmp_path / "old.keras")
    for mine, theirs in zip(resumed.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
