"""The EDSR network (Lim et al., 2017, "Enhanced Deep Residual Networks for Single Image
Super-Resolution"), written with `keras.ops` only so it trains on any Keras backend.

The model takes NHWC RGB images with values 0-255 and returns the upscaled image on the same
scale. Normalisation lives inside the model, so every consumer (training, evaluation, the ONNX
export and the service) feeds raw pixel values and never has to know the constants.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
import numpy as np
from keras import layers, ops

# The DIV2K training-set RGB mean that the reference EDSR implementation subtracts. Keeping the
# paper's constant makes weights comparable with other EDSR ports.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

SUPPORTED_SCALES = (2, 3, 4)


@keras.saving.register_keras_serializable(package="edsr")
class PixelShuffle(layers.Layer):
    """Sub-pixel convolution's rearrangement step: channels become a `factor`-times larger grid.

    A registered layer rather than `layers.Lambda(tf.nn.depth_to_space)`: a Lambda around a
    TensorFlow function ties the saved file to one backend and fails to reload.
    """

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        return ops.depth_to_space(inputs, self.factor, data_format="channels_last")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        f = self.factor
        return (
            batch,
            None if height is None else height * f,
            None if width is None else width * f,
            channels // (f * f),
        )

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="edsr")
class PixelRange(layers.Layer):
    """Maps 0-255 pixels to a zero-centred range for the network, or back again.

    With `inverse=False` it computes `(x - mean) / 127.5`; with `inverse=True`, `x * 127.5 + mean`.
    """

    def __init__(
        self, mean: tuple[float, float, float] = DIV2K_RGB_MEAN, inverse: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.inverse = bool(inverse)

    def call(self, inputs):
        mean = ops.convert_to_tensor([m * 255.0 for m in self.mean], dtype=inputs.dtype)
        if self.inverse:
            return inputs * 127.5 + mean
        return (inputs - mean) / 127.5

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "inverse": self.inverse}


def _upsampler(x, scale: int, filters: int):
    """Sub-pixel upsampling: x4 is two x2 stages as in the paper, x2 and x3 are one stage."""
    factors = [2, 2] if scale == 4 else [scale]
    for i, factor in enumerate(factors):
        x = layers.Conv2D(filters * factor * factor, 3, padding="same", name=f"upsample{i}_conv")(x)
        x = PixelShuffle(factor, name=f"upsample{i}_shuffle")(x)
    return x


def build_edsr(
    scale: int = 4,
    filters: int = 64,
    blocks: int = 16,
    res_scale: float = 1.0,
    name: str | None = None,
) -> keras.Model:
    """Builds an EDSR super-resolution model.

    The defaults are the paper's EDSR baseline (16 residual blocks of 64 filters, no batch
    normalisation, residual scaling off), about 1.5 million parameters at x4.

    Args:
        scale: Upscaling factor: 2, 3 or 4.
        filters: Feature channels in every convolution of the body.
        blocks: Number of residual blocks.
        res_scale: Factor applied to each block's residual branch before the skip addition; the
            paper uses 0.1 for its large 256-filter model to keep training stable.
        name: Model name; defaults to `edsr_x{scale}_{blocks}x{filters}`.

    Returns:
        A functional Keras model mapping (N, H, W, 3) float 0-255 to (N, H*scale, W*scale, 3).

    Raises:
        ValueError: If `scale`, `filters` or `blocks` is out of range.
    """
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")
    if filters < 1 or blocks < 0:
        raise ValueError(f"filters must be >= 1 and blocks >= 0, got {filters} and {blocks}")

    inputs = keras.Input(shape=(None, None, 3), name="lr")
    x = PixelRange(name="normalize")(inputs)
    head = layers.Conv2D(filters, 3, padding="same", name="head")(x)

    x = head
    for i in range(blocks):
        residual = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"block{i}_conv1"
        )(x)
        residual = layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv2")(residual)
        if res_scale != 1.0:
            residual = layers.Rescaling(res_scale, name=f"block{i}_scale")(residual)
        x = layers.Add(name=f"block{i}_add")([x, residual])
    x = layers.Conv2D(filters, 3, padding="same", name="body_end")(x)
    x = layers.Add(name="global_skip")([x, head])

    x = _upsampler(x, scale, filters)
    # The last convolution and the output mapping compute in float32 even under a mixed-precision
    # policy: a bfloat16 output would be quantised to about half a grey level, and the L1 loss
    # would see that noise.
    x = layers.Conv2D(3, 3, padding="same", dtype="float32", name="tail")(x)
    outputs = PixelRange(inverse=True, dtype="float32", name="sr")(x)
    return keras.Model(inputs, outputs, name=name or f"edsr_x{scale}_{blocks}x{filters}")


def describe_edsr(model: keras.Model) -> dict:
    """Reads the architecture back from a model built by `build_edsr` (its layer names)."""
    shuffles = [layer for layer in model.layers if isinstance(layer, PixelShuffle)]
    scale = 1
    for layer in shuffles:
        scale *= layer.factor
    blocks = sum(1 for layer in model.layers if layer.name.endswith("_conv1"))
    scales = [layer for layer in model.layers if layer.name == "block0_scale"]
    return {
        "scale": scale,
        "filters": model.get_layer("head").filters,
        "blocks": blocks,
        "res_scale": float(scales[0].scale) if scales else 1.0,
        "parameters": model.count_params(),
    }


@contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Sets Keras' global dtype policy (e.g. `float32`, `mixed_bfloat16`) for a block and puts
    the caller's back afterwards, so that one run or load never leaks its precision into the
    next one in the same process."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build_in(dtype: str, arch: dict) -> keras.Model:
    with dtype_policy_scope(dtype):
        return build_edsr(arch["scale"], arch["filters"], arch["blocks"], arch["res_scale"])


def _load_onnx_export(path, dtype: str) -> keras.Model:
    """Rebuilds the Keras model of an fp32 ONNX export from its metadata and Conv weights.

    tf2onnx keeps one ONNX Conv per Keras Conv2D, in the network's order (the graph is a chain
    of convolutions with skips, so the topological order is unique), with kernels in ONNX's
    OIHW layout instead of Keras' HWIO.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"{path} is a {meta['precision']} export; use the fp32 file")
    try:
        arch = {
            "scale": int(meta["scale"]),
            "filters": int(meta["filters"]),
            "blocks": int(meta["blocks"]),
            "res_scale": float(meta.get("res_scale", 1.0)),
        }
    except KeyError as error:
        raise ValueError(
            f"{path} lacks the EDSR metadata {error} of `python -m training export`"
        ) from error
    model = _build_in(dtype, arch)
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    layers_ = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    if len(convs) != len(layers_):
        raise ValueError(f"{path} has {len(convs)} convolutions, the model {len(layers_)}")
    for node, layer in zip(convs, layers_, strict=True):
        kernel = initializers[node.input[1]].transpose(2, 3, 1, 0)
        # tf2onnx drops a bias that is all zeros (an untrained layer) from the Conv node.
        has_bias = len(node.input) > 2 and node.input[2]
        bias = initializers[node.input[2]] if has_bias else np.zeros(kernel.shape[-1], np.float32)
        layer.set_weights([kernel, bias])
    _check_against_onnx(model, proto, path)
    return model


def _check_against_onnx(model: keras.Model, proto, path) -> None:
    """Raises ValueError unless the rebuilt model reproduces the ONNX file's output: graph
    optimisers may fold constants into convolutions (tf2onnx does for all-zero biases), which
    reading kernels back cannot undo."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
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


def load_edsr(path, dtype: str = "float32") -> keras.Model:
    """Loads an EDSR model for inference or fine-tuning, computing in `dtype` whatever precision
    policy it was trained under (a mixed-bfloat16 checkpoint still evaluates in float32).

    Args:
        path: A `.keras` file saved by training (optimizer state, if any, is ignored), or an fp32
            `.onnx` file written by `python -m training export` (such as the shipped
            `models/edsr_x4.onnx`), whose weights are read back into Keras.
        dtype: The compute and variable dtype of the returned model.

    Returns:
        An uncompiled EDSR model with the file's weights.
    """
    if str(path).endswith(".onnx"):
        return _load_onnx_export(path, dtype)
    trained = keras.models.load_model(path, compile=False)
    model = _build_in(dtype, describe_edsr(trained))
    model.set_weights(trained.get_weights())
    return model
