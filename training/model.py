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
from keras import layers, ops

# The DIV2K training-set RGB mean that the reference EDSR implementation subtracts. Keeping the
# paper's constant makes weights comparable with other EDSR ports.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

SUPPORTED_SCALES = (2, 3, 4)
#: The constructor arguments that say which weights a model has, with their types.
ARCHITECTURE = {"scale": int, "filters": int, "blocks": int, "res_scale": float}


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
        height, width = (None if size is None else size * self.factor for size in (height, width))
        return batch, height, width, channels // self.factor**2

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


def _conv(filters: int, name: str, **kwargs) -> layers.Conv2D:
    return layers.Conv2D(filters, 3, padding="same", name=name, **kwargs)


@keras.saving.register_keras_serializable(package="edsr")
class EDSR(keras.Model):
    """The EDSR super-resolution model: (N, H, W, 3) float 0-255 to (N, H*scale, W*scale, 3).

    The defaults are the paper's EDSR baseline (16 residual blocks of 64 filters, no batch
    normalisation, residual scaling off), about 1.5 million parameters at x4.

    Args:
        scale: Upscaling factor: 2, 3 or 4.
        filters: Feature channels in every convolution of the body.
        blocks: Number of residual blocks.
        res_scale: Factor applied to each block's residual branch before the skip addition; the
            paper uses 0.1 for its large 256-filter model to keep training stable.
        name: Model name; defaults to `edsr_x{scale}_{blocks}x{filters}`.

    Raises:
        ValueError: If `scale`, `filters` or `blocks` is out of range.
    """

    def __init__(self, scale=4, filters=64, blocks=16, res_scale=1.0, name=None, **kwargs):
        if scale not in SUPPORTED_SCALES:
            raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")
        if filters < 1 or blocks < 0:
            raise ValueError(f"filters must be >= 1 and blocks >= 0, got {filters} and {blocks}")
        inputs = keras.Input(shape=(None, None, 3), name="lr")
        x = head = _conv(filters, "head")(PixelRange(name="normalize")(inputs))
        for i in range(blocks):
            residual = _conv(filters, f"block{i}_conv1", activation="relu")(x)
            residual = _conv(filters, f"block{i}_conv2")(residual)
            if res_scale != 1.0:
                residual = layers.Rescaling(res_scale, name=f"block{i}_scale")(residual)
            x = layers.Add(name=f"block{i}_add")([x, residual])
        x = layers.Add(name="global_skip")([_conv(filters, "body_end")(x), head])
        # Sub-pixel upsampling: x4 is two x2 stages as in the paper, x2 and x3 are one stage.
        for i, factor in enumerate([2, 2] if scale == 4 else [scale]):
            x = _conv(filters * factor * factor, f"upsample{i}_conv")(x)
            x = PixelShuffle(factor, name=f"upsample{i}_shuffle")(x)
        # The last convolution and the output mapping compute in float32 even under a
        # mixed-precision policy: a bfloat16 output would be quantised to about half a grey
        # level, and the loss would see that noise.
        x = _conv(3, "tail", dtype="float32")(x)
        outputs = PixelRange(inverse=True, dtype="float32", name="sr")(x)
        name = name or f"edsr_x{scale}_{blocks}x{filters}"
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.scale, self.filters, self.blocks, self.res_scale = scale, filters, blocks, res_scale

    def get_config(self):
        return {"name": self.name, **{key: getattr(self, key) for key in ARCHITECTURE}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# The name the evaluation tests call the constructor by.
build_edsr = EDSR


def describe_edsr(model: keras.Model) -> dict:
    """The architecture (`ARCHITECTURE`'s keys) and parameter count of any EDSR model, read from
    its layers: checkpoints saved before `EDSR` was a class are plain functional models."""
    scale = 1
    for layer in model.layers:
        scale *= layer.factor if isinstance(layer, PixelShuffle) else 1
    res_scales = [layer.scale for layer in model.layers if layer.name == "block0_scale"]
    return {
        "scale": scale,
        "filters": model.get_layer("head").filters,
        "blocks": sum(layer.name.endswith("_conv1") for layer in model.layers),
        "res_scale": float(res_scales[0]) if res_scales else 1.0,
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


def build_in(dtype: str, architecture: dict) -> EDSR:
    """An EDSR of `architecture` (a dict with `ARCHITECTURE`'s keys) computing in `dtype`."""
    with dtype_policy_scope(dtype):
        return EDSR(**{key: architecture[key] for key in ARCHITECTURE})


def load_edsr(path, dtype: str = "float32") -> EDSR:
    """An uncompiled EDSR with the weights of `path`, computing in `dtype` whatever precision
    policy it was trained under (a mixed-bfloat16 checkpoint still evaluates in float32).

    `path` is a `.keras` file saved by training (its optimizer state is ignored) or an fp32
    `.onnx` file written by `python -m training export`, such as the shipped
    `models/edsr_x4.onnx`, whose weights `training.export.read_onnx_export` reads back.
    """
    if str(path).endswith(".onnx"):
        from training.export import read_onnx_export

        return read_onnx_export(path, dtype)
    trained = keras.models.load_model(path, compile=False)
    model = build_in(dtype, describe_edsr(trained))
    model.set_weights(trained.get_weights())
    return model
