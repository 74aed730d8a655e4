"""Test helpers: tiny ONNX models that follow the export contract, images, app helpers.

The models are built with `onnx.helper` during the test session, never downloaded: input `lr`
(NHWC float32, dynamic batch/height/width), output `sr` (NHWC, 4x the size), `scale` metadata.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.core.lifecycle import ModelLifecycle

SCALE = 4
CPU_ONLY = ["CPUExecutionProvider"]


def _conv_weights(rng: np.random.Generator, out_channels: int, in_channels: int) -> np.ndarray:
    # Weights around 1 / fan_in keep outputs near the input's 0-255 range, so comparisons are
    # not flattened by clipping, while the noise makes every output channel different.
    fan_in = in_channels * 9
    weights = rng.normal(1.0, 0.5, size=(out_channels, in_channels, 3, 3)) / fan_in
    return weights.astype(np.float32)


def build_model(
    path: Path,
    *,
    hidden_layers: int = 0,
    metadata: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Writes an x4 model: [conv 3x3 + ReLU] * hidden_layers -> conv 3x3 -> DepthToSpace.

    With no hidden layer, every output pixel depends on a 3x3 input neighbourhood; each hidden
    layer (dilation 2) widens the receptive field by two pixels in every direction.
    """
    rng = np.random.default_rng(seed)
    hidden_channels = 8
    initializers = []
    nodes = [helper.make_node("Transpose", ["lr"], ["x0"], perm=[0, 3, 1, 2])]
    current, channels = "x0", 3
    for layer in range(hidden_layers):
        weight, bias = f"w{layer}", f"b{layer}"
        initializers += [
            numpy_helper.from_array(_conv_weights(rng, hidden_channels, channels), weight),
            numpy_helper.from_array(rng.normal(0, 2, hidden_channels).astype(np.float32), bias),
        ]
        conv_out, relu_out = f"c{layer}", f"r{layer}"
        nodes += [
            helper.make_node(
                "Conv", [current, weight, bias], [conv_out], pads=[2, 2, 2, 2], dilations=[2, 2]
            ),
            helper.make_node("Relu", [conv_out], [relu_out]),
        ]
        current, channels = relu_out, hidden_channels
    out_channels = 3 * SCALE * SCALE
    initializers += [
        numpy_helper.from_array(_conv_weights(rng, out_channels, channels), "w_out"),
        numpy_helper.from_array(rng.normal(0, 2, out_channels).astype(np.float32), "b_out"),
    ]
    nodes += [
        helper.make_node("Conv", [current, "w_out", "b_out"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["features"], ["nchw"], blocksize=SCALE, mode="DCR"),
        helper.make_node("Transpose", ["nchw"], ["sr"], perm=[0, 2, 3, 1]),
    ]
    if metadata is None:
        metadata = {
            "scale": str(SCALE),
            "filters": str(hidden_channels),
            "blocks": str(hidden_layers),
            "training_data": "none (test fixture)",
        }
    return save_contract_model(path, "tiny_edsr", nodes, initializers, metadata)


def save_contract_model(
    path: Path, name: str, nodes: list, initializers: list, metadata: dict[str, str]
) -> Path:
    """Saves a graph from `lr` (NHWC float32) to `sr` (x4) as the export contract names them."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", "H4", "W4", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def whole_image_runner(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Runs a model on a single whole image, as a reference for the tiler (float32 output)."""
    session = ort.InferenceSession(str(model_path), providers=CPU_ONLY)

    def run(image: np.ndarray) -> np.ndarray:
        batch = np.asarray(image, dtype=np.float32)[np.newaxis]
        return session.run(["sr"], {"lr": batch})[0][0]

    return run


def batch_runner(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Runs a model on an NHWC batch (the `run_tiles` callable of the tiler)."""
    session = ort.InferenceSession(str(model_path), providers=CPU_ONLY)
    return lambda batch: session.run(["sr"], {"lr": batch})[0]


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise on top: structure at every scale, values across 0-255."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.linspace(0, 1, width)[None, :, None]
    base = 40 + 120 * rows + 80 * cols * np.array([1.0, 0.5, 0.2])
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def encode(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_bytes(width: int = 5, height: int = 3, mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = noise_image(height, width, seed)
    image = Image.fromarray(pixels)
    return encode(image if mode == "RGB" else image.convert(mode))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    checksum = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)


def raw_png(width: int, height: int, colour_type: int, rows: bytes) -> bytes:
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit colour, nor lie about sizes.

    `rows` is the uncompressed scanline data (a filter byte per row, then the samples); leaving
    it short makes a file whose header claims more pixels than it holds.
    """
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def raw_tiff(bits: int, sample_format: int, samples: int = 1, side: int = 4) -> bytes:
    """A little-endian TIFF of zeros written by hand, with any bit depth and sample format.

    Pillow writes neither 16-bit float nor 3-channel float TIFFs, which other tools do.
    `sample_format` is the TIFF SampleFormat tag: 1 unsigned, 2 signed integer, 3 float.
    """
    from PIL import TiffImagePlugin

    data = bytes(side * side * samples * bits // 8)
    directory = TiffImagePlugin.ImageFileDirectory_v2()
    directory[256] = side  # ImageWidth
    directory[257] = side  # ImageLength
    directory[258] = (bits,) * samples  # BitsPerSample
    directory[259] = 1  # Compression: none
    directory[262] = 1 if samples == 1 else 2  # PhotometricInterpretation: grey or RGB
    # StripOffsets: relative to the end of the directory, where Pillow's writer places the data.
    directory[273] = 0
    directory[277] = samples  # SamplesPerPixel
    directory[278] = side  # RowsPerStrip
    directory[279] = len(data)  # StripByteCounts
    directory[339] = (sample_format,) * samples  # SampleFormat
    return b"II*\x00" + struct.pack("<I", 8) + directory.tobytes(8) + data


def wait_until_ready(client: TestClient) -> None:
    """Blocks until the app's background warm-up has finished."""
    assert lifecycle_of(client.app).wait_warm(timeout=30), "warm-up did not finish"


def lifecycle_of(app: Any) -> ModelLifecycle:
    """The app's model lifecycle."""
    lifecycle: ModelLifecycle = app.state.context.lifecycle
    return lifecycle
