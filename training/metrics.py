"""The Keras PSNR metric of training: a batch PSNR that runs on every backend (`keras.ops`).

The evaluation protocol (Y-PSNR and SSIM on uint8 images) is `training.protocol`.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edsr", name="psnr")
def psnr(y_true, y_pred):
    """Per-image RGB PSNR (dB) of a batch on the 0-255 scale, for `model.compile(metrics=...)`.

    Returns one value per image so Keras averages over every image of every batch (the keras-io
    example's metric only looked at the first image). Predictions are clipped to the valid range
    first, as the deployed model's output is; identical images are capped at 100 dB so an average
    never turns infinite.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.clip(ops.cast(y_pred, "float32"), 0.0, 255.0)
    mse = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
    psnr = 10.0 * ops.log10(255.0**2 / ops.maximum(mse, 1e-10))
    return ops.minimum(psnr, 100.0)


# The name the training code compiles with; the function's own name, "psnr", is what Keras logs.
psnr_metric = psnr
