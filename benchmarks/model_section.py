"""Model section: onnxruntime against Keras `predict` and OpenCV DNN, on the same weights.

One whole-image call on the same input for each engine, and the FLOP rate each reaches measured
against numpy's sgemm in the same run. onnxruntime runs with the service's own session settings.
Keras and OpenCV are imported here only, and only when their baseline is measured; Keras needs
the `.keras` checkpoint (`--checkpoint`), since the ONNX file cannot be loaded back into Keras.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.context import BenchContext
from benchmarks.measure import (
    conv_flops,
    megapixels_per_second,
    ratio,
    sgemm_gflops,
    time_interleaved,
)


def _engine_row(
    name: str, timing: Any, output: np.ndarray, reference: np.ndarray, flops: float, sgemm: float
) -> dict[str, Any]:
    seconds = timing.median
    output_pixels = int(output.shape[1] * output.shape[2])
    return {
        "engine": name,
        "time_ms": timing.as_dict(),
        "output_mp_per_s": round(megapixels_per_second(output_pixels, seconds), 3),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "fraction_of_sgemm": round(flops / seconds / 1e9 / sgemm, 3),
        "max_abs_diff_vs_onnxruntime": round(float(np.max(np.abs(output - reference))), 4),
    }


def _keras_predict(checkpoint: Any) -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.model import load_edsr

    model = load_edsr(checkpoint)
    return lambda batch: np.asarray(model.predict(batch, verbose=0))


def _opencv_forward(model_path: Any) -> Any:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(model_path))

    def forward(batch: np.ndarray) -> np.ndarray:
        net.setInput(batch)
        return np.asarray(net.forward())

    return forward


def run(ctx: BenchContext) -> dict[str, Any]:
    """Times onnxruntime, Keras `predict` and OpenCV DNN on one `model_input`-sided image."""
    side = ctx.preset.model_input
    batch = ctx.image(side)[np.newaxis].astype(np.float32)
    flops = conv_flops(ctx.model_path, side, side)
    sgemm = sgemm_gflops()
    ctx.log(f"model: sgemm {sgemm:.0f} GFLOP/s; {flops / 1e9:.1f} GFLOP per {side}² call")

    onnx_engine = ctx.engine
    engines: dict[str, Any] = {"onnxruntime": onnx_engine.run}
    baselines: dict[str, Any] = {"opencv_dnn": lambda: _opencv_forward(ctx.model_path)}
    if ctx.checkpoint is not None:
        baselines["keras_predict"] = lambda: _keras_predict(ctx.checkpoint)
    skipped: dict[str, str] = {}
    if ctx.checkpoint is None:
        skipped["keras_predict"] = "no --checkpoint given"
    for name, build in baselines.items():
        try:
            engine = build()
            engine(batch)  # fails here, not inside the timed rounds, if the engine cannot run
        except Exception as exc:  # a missing optional package must not sink the whole run
            skipped[name] = f"{type(exc).__name__}: {exc}"
            ctx.log(f"model: {name} skipped ({skipped[name]})")
            continue
        engines[name] = engine

    # The engines take turns, so a machine that speeds up or slows down mid-run shifts them all.
    timings = time_interleaved(
        {name: lambda engine=engine: engine(batch) for name, engine in engines.items()},
        ctx.preset.repeats,
    )
    reference = timings["onnxruntime"][1]
    rows = []
    for name, (timing, output) in timings.items():
        rows.append(_engine_row(name, timing, output, reference, flops, sgemm))
        ctx.log(f"model: {name} {timing.median * 1000:.0f} ms")
    rows[0]["providers"] = list(onnx_engine.info.providers)

    by_name = {row["engine"]: row["time_ms"]["median"] for row in rows}
    ort_ms = by_name["onnxruntime"]
    return {
        "input": f"1x{side}x{side}x3",
        "gflop_per_call": round(flops / 1e9, 4),
        "sgemm_gflop_per_s": round(sgemm, 1),
        "engines": rows,
        "skipped": skipped,
        "speedup_vs_keras_predict": ratio(by_name.get("keras_predict"), ort_ms),
        "speedup_vs_opencv_dnn": ratio(by_name.get("opencv_dnn"), ort_ms),
    }
