"""What a running job has done: tiles done / total, and a preview of the tiles finished.

`JobProgress` is the tiler's `progress` callback (`service.core.tiling.TileProgress`), called in
the worker thread; the event loop reads it. Counting needs no lock (one writer, and readers
only ever see a count a little behind). The preview is rendered on request from the output
array the tiler is filling and a mask of the tiles finished: a PNG of at most `PREVIEW_SIDE`
pixels a side whose finished tiles are opaque and the rest transparent, so that the page lays
it over its own (blurry) copy of the input and the picture sharpens tile by tile. Once the
first pass is done its preview is rendered one last time and kept, and the output array let
go: with `quality=max` the full-size output of pass 0 must not live on through 7 more passes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from service.core.tiling import TileSpan

#: Longest side of a preview, in pixels: enough for a page, small to send every second.
PREVIEW_SIDE = 512


class JobProgress:
    """Tiles done of one job, over all its passes (8 with `quality=max`), and its preview.

    Args:
        scale: The model's factor (output pixels per input pixel, per side).
        passes: How many times the tiler runs over the image: 1, or 8 for the ensemble.
        on_change: Called (in the worker thread) after each change.
    """

    def __init__(self, scale: int, passes: int, on_change: Callable[[], None]) -> None:
        self.scale = scale
        self.passes = passes
        self.on_change = on_change
        self.pass_index = -1
        self.tiles_per_pass = 0
        self.done_in_pass = 0
        self._output: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        #: The preview of the first pass once it has ended (its output is then let go).
        self._final: bytes | None = None

    @property
    def tiles_done(self) -> int:
        return max(self.pass_index, 0) * self.tiles_per_pass + self.done_in_pass

    @property
    def tiles_total(self) -> int:
        return self.passes * self.tiles_per_pass

    def __call__(self, output: np.ndarray, spans: Sequence[TileSpan], total: int) -> None:
        if not spans:  # a pass begins
            self.pass_index += 1
            self.tiles_per_pass, self.done_in_pass = total, 0
            if self.pass_index == 0:
                # Only the first pass is previewed: it is the untransformed image (the others
                # are its flips and turns).
                rows, cols = output.shape[0] // self.scale, output.shape[1] // self.scale
                self._mask = np.zeros((rows, cols), dtype=bool)
                self._output = output
        else:
            self.done_in_pass += len(spans)
            if self.pass_index == 0 and self._mask is not None:
                for span in spans:
                    self._mask[
                        span.rows.keep_start : span.rows.keep_end,
                        span.cols.keep_start : span.cols.keep_end,
                    ] = True
                if self.done_in_pass >= self.tiles_per_pass:
                    self._final = self._render()
                    self._output = self._mask = None
        self.on_change()

    def preview_png(self) -> bytes | None:
        """The finished tiles, subsampled to at most `PREVIEW_SIDE` a side, as an RGBA PNG
        (transparent where no tile has finished); None before the first pass starts."""
        # Rendered first: the worker thread sets `_final` before it lets the output go.
        preview = self._render()
        return preview if preview is not None else self._final

    def _render(self) -> bytes | None:
        output, mask = self._output, self._mask
        if output is None or mask is None:
            return None
        height, width = output.shape[:2]
        step = max(1, math.ceil(max(height, width) / PREVIEW_SIDE))
        # Nearest-neighbour subsampling: a strided view, so no copy of the full output.
        pixels = output[::step, ::step]
        rows = np.arange(0, height, step) // self.scale
        cols = np.arange(0, width, step) // self.scale
        done = mask[np.ix_(rows, cols)]
        rgba = np.zeros((*done.shape, 4), dtype=np.uint8)
        rgba[done, :3] = pixels[done]
        rgba[done, 3] = 255
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
