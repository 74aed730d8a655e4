"""Export a trained `.keras` checkpoint to ONNX for the service, and prove the export right.

The ONNX file has one input `lr` (NHWC float32, 0-255, dynamic batch, height and width) and one
output `sr` (NHWC float32, scale times larger, unclipped). Its `metadata_props` describe the model
and its training. Every export is checked with `onnx.checker` and compared with Keras on random
odd-sized inputs; an export that disagrees by more than the tolerance is not written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from service.host import atomic_write_bytes

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
    command = ["git", "describe", "--always", "--dirty"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).parent
        git = subprocess.run(
            command, cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        if git.stdout.strip():
            return git.stdout.strip()
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
        for key in ("train_images", "patch_size", "batch_size"):
            meta[key] = str(config.get(key, "unknown"))
        # Runs from before degradation presets existed trained on the standard one.
        meta["degradation"] = str(config.get("degradation", "bicubic"))
        if config.get("init_from"):
            # A fine-tuned model's steps count from these weights, not from scratch.
            meta["init_from"] = str(config["init_from"])
    if (folder / STATE_FILE).exists():
        state = json.loads((folder / STATE_FILE).read_text())
        step = state.get("best_step") if checkpoint.name == "best.keras" else state.get("step")
        meta["steps"] = str(step)
        if checkpoint.name == "average.keras":  # the mean of the weights at these validations
            meta["averaged_validations"] = str(state.get("averaged", "unknown"))
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
    """The largest |Keras - onnxruntime| on random odd-sized inputs, on the 0-255 scale; an
    ExportError when it exceeds `tolerance`."""
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
    """Exports a `.keras` checkpoint to a verified `out` ONNX file, writes its metadata and
    parity figure to `<out>.json` and returns them. `tolerance` bounds |ONNX - Keras| on the
    0-255 scale; `fp16` also writes the verified half-precision copy (`training.precision`).

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

    from training.model import load_edsr

    checkpoint, out = Path(checkpoint), Path(out)
    model = load_edsr(checkpoint)
    proto = _convert(model, opset)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the export: {error}") from error
    meta = _describe(proto, model, checkpoint, opset)
    serialized = proto.SerializeToString()
    parity = verify_parity(model, serialized, tolerance)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, serialized)
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


def _describe(proto, model, checkpoint: Path, opset: int) -> dict[str, str]:
    """Writes the model's, the run's and the export's facts into `proto` and returns them."""
    from training.model import describe_edsr

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
    return meta


def read_onnx_export(path, dtype: str = "float32"):
    """Rebuilds the Keras model of an fp32 export from its metadata and Conv weights.

    tf2onnx keeps one ONNX Conv per Keras Conv2D, in the network's order (the graph is a chain
    of convolutions with skips, so the topological order is unique), with kernels in ONNX's
    OIHW layout instead of Keras' HWIO.

    Raises:
        ValueError: An fp16 file, missing EDSR metadata, or weights that do not reproduce the
            file's output.
    """
    import onnx
    from keras import layers
    from onnx import numpy_helper

    from training.model import ARCHITECTURE, build_in

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"{path} is a {meta['precision']} export; use the fp32 file")
    try:
        # Exports written before res_scale was recorded are of the paper's baseline, 1.0.
        meta = {"res_scale": "1.0", **meta}
        arch = {key: kind(meta[key]) for key, kind in ARCHITECTURE.items()}
    except KeyError as error:
        raise ValueError(
            f"{path} lacks the EDSR metadata {error} of `python -m training export`"
        ) from error
    model = build_in(dtype, arch)
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    conv_layers = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    if len(convs) != len(conv_layers):
        raise ValueError(f"{path} has {len(convs)} convolutions, the model {len(conv_layers)}")
    for node, layer in zip(convs, conv_layers, strict=True):
        kernel = initializers[node.input[1]].transpose(2, 3, 1, 0)
        # tf2onnx drops a bias that is all zeros (an untrained layer) from the Conv node.
        has_bias = len(node.input) > 2 and node.input[2]
        bias = initializers[node.input[2]] if has_bias else np.zeros(kernel.shape[-1], np.float32)
        layer.set_weights([kernel, bias])
    _check_read_back(model, proto.SerializeToString(), path)
    return model


def _check_read_back(model, onnx_bytes: bytes, path) -> None:
    """Raises ValueError unless the rebuilt model reproduces the ONNX file's output: graph
    optimisers may fold constants into convolutions (tf2onnx does for all-zero biases), which
    reading kernels back cannot undo."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).uniform(0, 255, (1, 11, 13, 3)).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: probe})[0]
    worst = float(np.abs(np.asarray(model(probe, training=False)) - expected).max())
    # On a GPU, JAX (and TensorFlow) run float32 convolutions in TF32 by default, which moved
    # this probe's output by 0.14 grey levels on an H100; a weight read back wrongly moves it by
    # whole grey levels, so half a grey level separates the two.
    if worst > 0.5:
        raise ValueError(
            f"weights read back from {path} do not reproduce it (max diff {worst:.3g})"
        )
