"""The quality modes of `/upscale` (the `quality` query parameter)."""

from __future__ import annotations

import enum


class Quality(enum.StrEnum):
    """How much model work one upscale may take."""

    #: One pass of the model over the image.
    STANDARD = "standard"
    #: Self-ensemble: the model runs on the 8 flips and rotations of the image and the results
    #: are averaged. 8 times the compute for about 0.1 dB (the EDSR paper's "+" figures).
    MAX = "max"
