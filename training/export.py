"""Export a trained `.keras` checkpoint to ONNX for the service, and prove the export right.

The ONNX file has one input `lr` (NHWC float32, 0-255, dynamic batch, height and width) and one
output `sr` (NHWC float32, scale times larger, unclipped). Its `metadata_props` describe the model
and its training. Every export is checked with `onnx.checker` and compared with Keras on random
odd-sized inputs; an export that disagrees by more than the tolerance is not written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
# Odd, non-square shapes (and a batch of two) catch layout and padding mistakes that square
# power-of-two inputs hide.
PARITY_SHAPES = ((1, 37, 53, 3), (2, 19, 30, 3))


class ExportError(RuntimeError):
    """The export could not be produced or failed its verification."""


def code_version() -> str:
    """`git describe` of the source tree when available, else the installed package version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if described:
            return described
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return importlib_metadata.version("edsr-upscaler")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def run_metadata(checkpoint: Path) -> dict[str, str]:
    """Training facts for the ONNX metadata, read from the run folder beside the checkpoint
    (config.json, state.json); 'unknown' where the checkpoint has no run folder."""
    from training.config import CONFIG_FILE
    from training.train import STATE_FILE

    folder = checkpoint.parent
    meta = {"training_data": "unknown", "steps": "unknown", "best_val_psnr": "unknown"}
    if (folder / CONFIG_FILE).exists():
        config = json.loads((folder / CONFIG_FILE).read_text())
        meta["training_data"] = ", ".join(config.get("data", [])) or "unknown"
        meta["train_images"] = str(config.get("train_images", "unknown"))
        meta["patch_size"] = str(config.get("patch_size", "unknown"))
        meta["batch_size"] = str(config.get("batch_size", "unknown"))
        if config.get("init_from"):
            # A fine-tuned model's steps count from these weights, not from scratch.
            meta["init_from"] = str(config["init_from"])
    if (folder / STATE_FILE).exists():
        state = json.loads((folder / STATE_FILE).read_text())
        step = state.get("best_step") if checkpoint.name == "best.keras" else state.get("step")
        meta["steps"] = str(step)
        if state.get("best_val_psnr") is not None:
            meta["best_val_psnr"] = f"{state['best_val_psnr']:.3f}"
    return meta


def _rename_value(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def _convert(model, opset: int):
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, None, None, 3), tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(lr):
        return model(lr, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    # tf2onnx names tensors after TensorFlow's graph ("lr:0", "Identity:0"); the service's
    # contract uses plain names.
    _rename_value(proto.graph, proto.graph.input[0].name, INPUT_NAME)
    _rename_value(proto.graph, proto.graph.output[0].name, OUTPUT_NAME)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        for dim, label in zip(
            value.type.tensor_type.shape.dim, ("batch", "height", "width"), strict=False
        ):
            dim.dim_param = label if label == "batch" else f"{label}_{value.name}"
    return proto


def verify_parity(keras_model, onnx_bytes: bytes, tolerance: float, seed: int = 0) -> float:
    """Runs Keras and onnxruntime on random odd-sized inputs.

    Returns:
        The largest absolute difference seen, on the 0-255 scale.

    Raises:
        ExportError: When it exceeds `tolerance`.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in PARITY_SHAPES:
        batch = rng.uniform(0, 255, shape).astype(np.float32)
        expected = np.asarray(keras_model(batch, training=False))
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != Keras {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    if worst > tolerance:
        raise ExportError(f"ONNX output differs from Keras by {worst:.4f} > {tolerance}")
    return worst


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = 17,
    tolerance: float = 0.05,
    fp16: bool = False,
) -> dict:
    """Exports a checkpoint to a verified ONNX file plus a JSON sidecar of its metadata.

    Args:
        checkpoint: A `.keras` file written by training.
        out: Where to write the `.onnx` file; `<out>.json` gets the metadata and parity figure.
        opset: ONNX opset (17 or newer).
        tolerance: Largest allowed |ONNX - Keras| on the 0-255 scale.
        fp16: Also write the verified half-precision copy `<stem>_fp16.onnx` beside `out`
            (see `training.precision`); its parity goes into the report.

    Returns:
        The metadata written, with the measured parity.

    Raises:
        ExportError: Wrong backend, failed conversion, checker or parity failure (of the fp16
            copy too, when asked for; the fp32 file is kept then).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError("export needs the TensorFlow backend: run with KERAS_BACKEND=tensorflow")
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    import onnx

    from training.model import describe_edsr, load_edsr

    checkpoint, out = Path(checkpoint), Path(out)
    model = load_edsr(checkpoint)
    proto = _convert(model, opset)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the export: {error}") from error

    arch = describe_edsr(model)
    meta = {key: str(value) for key, value in arch.items()}
    meta.update(run_metadata(checkpoint))
    meta.update(
        {
            "input": f"{INPUT_NAME}: NHWC float32 RGB 0-255, dynamic batch/height/width",
            "output": f"{OUTPUT_NAME}: NHWC float32 RGB 0-255 (unclipped), x{arch['scale']}",
            "checkpoint": checkpoint.name,
            "export_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "code_version": code_version(),
            "opset": str(opset),
        }
    )
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"EDSR x{arch['scale']} super-resolution ({arch['blocks']} blocks, "
        f"{arch['filters']} filters)"
    )
    serialized = proto.SerializeToString()
    parity = verify_parity(model, serialized, tolerance)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_bytes(serialized)
    os.replace(tmp, out)
    report = {**meta, "parity_max_abs_diff": parity, "onnx_file": out.name}
    if fp16:
        from training.precision import PrecisionError, convert_to_fp16

        try:
            report.update(convert_to_fp16(out))
        except PrecisionError as error:
            raise ExportError(str(error)) from error
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("exported %s -> %s (max |onnx - keras| = %.2e)", checkpoint, out, parity)
    return report
