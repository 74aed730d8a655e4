"""Start-up section: seconds from starting the service process to its first /readyz 200, per
engine (imports, model load or compile, warm-up of the serving tile shape).

The engines take turns, `repeats` starts each, so a machine that drifts affects them alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.server import time_to_ready


def run(ctx: BenchContext) -> dict[str, Any]:
    """Starts the service `repeats` times per installed engine, interleaved."""
    names = ctx.engine_names
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(max(1, ctx.preset.repeats)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            settings = ctx.settings.model_copy(update={"engine": name})
            seconds[name].append(time_to_ready(settings))
            ctx.log(f"startup: {name} ready after {seconds[name][-1]:.2f} s")
    rows = {
        name: {
            "median_s": round(float(np.median(values)), 3),
            "samples_s": [round(value, 3) for value in values],
        }
        for name, values in seconds.items()
    }
    result: dict[str, Any] = {"tile_size": ctx.settings.tile_size, "engines": rows}
    if "openvino" in rows:
        result["openvino_minus_onnxruntime_s"] = round(
            rows["openvino"]["median_s"] - rows["onnxruntime"]["median_s"], 3
        )
    return result
