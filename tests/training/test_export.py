"""ONNX export: contract, metadata, self-verification."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from training.export import ExportError, export_onnx
from training.model import build_edsr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.keras"
    build_edsr(filters=8, blocks=1).save(path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "edsr_x4.onnx"
    return out, export_onnx(checkpoint, out)


def test_export_has_the_service_contract_with_dynamic_dims(exported):
    out, _ = exported
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["lr"]
    assert [o.name for o in model.graph.output] == ["sr"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height_lr", "width_lr", 3]
    assert model.opset_import[0].version >= 17


def test_onnxruntime_matches_keras_on_an_odd_sized_batch(exported, checkpoint):
    import keras

    out, report = exported
    assert report["parity_max_abs_diff"] <= 0.05
    batch = np.random.default_rng(5).uniform(0, 255, (2, 11, 7, 3)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["sr"], {"lr": batch})[0]
    expected = np.asarray(keras.models.load_model(checkpoint)(batch))
    assert got.shape == (2, 44, 28, 3)
    assert np.abs(got - expected).max() <= 0.05


def test_metadata_describes_the_model(exported):
    out, report = exported
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    for key in (
        "scale",
        "filters",
        "blocks",
        "parameters",
        "training_data",
        "steps",
        "best_val_psnr",
        "export_date",
        "code_version",
    ):
        assert key in meta, key
    assert meta["scale"] == "4" and meta["filters"] == "8" and meta["blocks"] == "1"
    assert json.loads(out.with_suffix(".json").read_text())["parameters"] == meta["parameters"]
    assert report["scale"] == "4"


def test_a_fine_tuned_models_metadata_names_its_starting_weights(tmp_path):
    from training.export import run_metadata

    run = tmp_path
    config = run / "config.json"
    config.write_text(json.dumps({"data": ["photos"], "init_from": "runs/first/best.keras"}))
    assert run_metadata(run / "best.keras")["init_from"] == "runs/first/best.keras"
    config.write_text(json.dumps({"data": ["photos"], "init_from": ""}))
    assert "init_from" not in run_metadata(run / "best.keras")


def test_an_averaged_models_metadata_says_how_many_validations_it_averages(tmp_path):
    from training.export import run_metadata

    (tmp_path / "state.json").write_text(json.dumps({"step": 50, "best_step": 40, "averaged": 3}))
    assert run_metadata(tmp_path / "average.keras")["averaged_validations"] == "3"
    assert run_metadata(tmp_path / "average.keras")["steps"] == "50"
    assert "averaged_validations" not in run_metadata(tmp_path / "last.keras")


def test_a_failed_parity_check_writes_no_file(checkpoint, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from Keras"):
        export_onnx(checkpoint, out, tolerance=-1.0)
    assert not out.exists()


def test_old_opsets_are_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_onnx(checkpoint, tmp_path / "m.onnx", opset=13)


def test_fp16_export_sits_beside_the_fp32_one(exported):
    pytest.importorskip("onnxconverter_common")
    from onnx import TensorProto

    from training.precision import convert_to_fp16

    out, _ = exported
    report = convert_to_fp16(out)
    fp16 = out.with_name("edsr_x4_fp16.onnx")
    assert report["fp16_file"] == fp16.name
    model = onnx.load(fp16)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "fp16" and meta["scale"] == "4" and "training_data" in meta
    # keep_io_types: the service feeds float32 and reads float32, inside it is half precision.
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
    assert report["fp16_parity"]["max_abs_diff"] <= 1.0
    batch = np.random.default_rng(3).uniform(0, 255, (1, 9, 13, 3)).astype(np.float32)
    run = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            ["sr"], {"lr": batch}
        )[0]
        for path in (out, fp16)
    ]
    assert run[1].dtype == np.float32 and np.abs(run[0] - run[1]).max() <= 1.0


def test_failed_fp16_parity_writes_no_file(exported, tmp_path):
    pytest.importorskip("onnxconverter_common")
    from training.precision import PrecisionError, convert_to_fp16

    out, _ = exported
    target = tmp_path / "bad_fp16.onnx"
    with pytest.raises(PrecisionError, match="differs from fp32"):
        convert_to_fp16(out, target, tolerance=-1.0)
    assert not target.exists()


def test_export_command_with_fp16(checkpoint, tmp_path):
    pytest.importorskip("onnxconverter_common")
    from training.__main__ import main

    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--fp16"]) == 0
    assert out.exists() and (tmp_path / "model_fp16.onnx").exists()
    assert "fp16_parity" in json.loads(out.with_suffix(".json").read_text())


def test_an_export_loads_back_into_keras_with_the_same_weights(tmp_path):
    from training.model import load_edsr

    # Trained layers have non-zero biases; give the tiny model some so nothing is folded away.
    model = build_edsr(filters=8, blocks=1)
    rng = np.random.default_rng(0)
    model.set_weights(
        [w + rng.normal(0, 0.01, w.shape).astype(np.float32) for w in model.get_weights()]
    )
    model.save(tmp_path / "trained.keras")
    export_onnx(tmp_path / "trained.keras", tmp_path / "trained.onnx")
    restored = load_edsr(tmp_path / "trained.onnx")
    for mine, theirs in zip(restored.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


def test_an_export_that_cannot_be_read_back_exactly_is_refused(exported):
    from training.model import load_edsr

    # The untrained fixture's all-zero biases let tf2onnx fold the input scaling into the first
    # convolution, so its kernels no longer equal the Keras ones: the check must notice.
    out, _ = exported
    with pytest.raises(ValueError, match="do not reproduce"):
        load_edsr(out)
