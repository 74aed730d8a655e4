"""Geometric self-ensemble (the EDSR paper's "+" results): run the model on the 8 rotations and
mirror images of the input, undo each transform on the output, and average.

Pure numpy and model-agnostic, so the service's quality mode and the offline evaluation share it.
It costs 8 model runs and typically gains 0.1-0.2 dB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

#: Rows of the uint16 sum rounded at a time by `self_ensemble_uint8`.
_ROUNDING_ROWS = 256

# (quarter turns, mirror) for the 8 symmetries of the square.
TRANSFORMS: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))


def _forward(image: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    if mirror:
        image = image[:, ::-1]
    return np.rot90(image, turns, axes=(0, 1))


def _inverse(image: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    image = np.rot90(image, -turns, axes=(0, 1))
    if mirror:
        image = image[:, ::-1]
    return image


def _outputs(
    upscale: Callable[[np.ndarray], np.ndarray], image: np.ndarray
) -> Iterator[np.ndarray]:
    """The 8 outputs, each already transformed back (views, not copies, where possible)."""
    for turns, mirror in TRANSFORMS:
        transformed = np.ascontiguousarray(_forward(image, turns, mirror))
        yield _inverse(np.asarray(upscale(transformed)), turns, mirror)


def self_ensemble(upscale: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    """Averages `upscale` over the 8 dihedral transforms of `image`.

    Args:
        upscale: Maps an HxWxC image to its upscaled version (any dtype; averaged as float32).
        image: The HxWxC input.

    Returns:
        The float32 mean of the 8 back-transformed outputs.
    """
    total: np.ndarray | None = None
    for restored in _outputs(upscale, image):
        if total is None:
            total = restored.astype(np.float32)  # a copy, whatever the output's dtype
        else:
            # In place: a large output must not cost a new float32 array per transform.
            np.add(total, restored, out=total, casting="unsafe")
        del restored
    assert total is not None
    total /= len(TRANSFORMS)
    return total


def self_ensemble_uint8(
    upscale: Callable[[np.ndarray], np.ndarray], image: np.ndarray
) -> np.ndarray:
    """The rounded uint8 mean of `upscale` over the 8 transforms, for models that give uint8.

    The same pixels as `np.round(self_ensemble(...))` (halves go to the even neighbour), but the
    sum is kept in uint16 (8 x 255 fits) and no float32 copy of the output is ever made: for the
    service's largest output, 8192 x 8192 RGB, that is 0.4 GB of sum instead of 0.8 GB of
    float32 sum plus 0.8 GB for each float32 temporary.

    Args:
        upscale: Maps an HxWx3 uint8 image to its upscaled uint8 version.
        image: The HxWx3 input.

    Returns:
        The uint8 mean of the 8 back-transformed outputs.
    """
    total: np.ndarray | None = None
    for restored in _outputs(upscale, image):
        if restored.dtype != np.uint8:
            raise TypeError(f"expected uint8 outputs, got {restored.dtype}")
        if total is None:
            total = restored.astype(np.uint16)
        else:
            np.add(total, restored, out=total)
        # Dropped before the next output is computed, so only one output is alive at a time.
        del restored
    assert total is not None
    mean = np.empty(total.shape, dtype=np.uint8)
    # Row blocks keep the rounding's temporaries small next to the image.
    for start in range(0, total.shape[0], _ROUNDING_ROWS):
        block = total[start : start + _ROUNDING_ROWS]
        # block / 8 rounded half to even: the quotient, plus one when the remainder is over
        # half, or exactly half and the quotient odd.
        quotient, remainder = block >> 3, block & 7
        quotient += (remainder > 4) | ((remainder == 4) & (quotient & 1).astype(bool))
        mean[start : start + _ROUNDING_ROWS] = quotient
    return mean
